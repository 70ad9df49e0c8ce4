"""Every error the server sends: one readable sentence in ``detail``, never a server path.

Each exception class maps to one status code (``install_error_handlers`` in :mod:`.app`); every
error response, including the middlewares' refusals, is built by :func:`error_response`, which
removes any path inside the work and temp folders that a message from GDAL or the OS may carry.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from starlette.responses import JSONResponse

TEMP = (Path(tempfile.gettempdir()), Path(tempfile.gettempdir()).resolve())


class ServerFault(RuntimeError):
    """A failure that is not the client's (a render or a preparation that crashed): answered with 500."""


def path_scrubber(folders: Iterable[Path]) -> re.Pattern[str]:
    """A pattern matching any path inside ``folders`` (longest first), up to the next separator."""
    names = sorted({str(f) for f in folders if len(str(f)) > 1}, key=len, reverse=True)
    return re.compile("(?:" + "|".join(re.escape(n) for n in names) + r")[^\s'\",;)]*")


DEFAULT_SCRUB = path_scrubber(TEMP)


def error_response(status: int, detail: str, headers: dict[str, str] | None = None,
                   scrub: re.Pattern[str] = DEFAULT_SCRUB, **extra: object) -> JSONResponse:
    """The one way an error leaves the server: ``{"detail": sentence, **extra}`` without server paths."""
    return JSONResponse({"detail": scrub.sub("<server file>", detail), **extra}, status_code=status, headers=headers)


