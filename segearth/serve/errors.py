"""Every error the server sends: one readable sentence in ``detail``, never a server path.

Each exception class maps to one status code; all responses go through :func:`error_response`,
which removes the work folder and temp paths that a message from GDAL or the OS may carry. An
unexpected exception is logged with its traceback and answered with a fixed sentence.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..geo.read import RasterInputError
from .engine import RenderCancelled
from .limits import QuestionError
from .queue import QueueFull, QueueTimeout
from .store import ServerFault, UnknownImage
from .upload import UploadRejected, UploadTooLarge

log = logging.getLogger("segearth.serve")


def path_scrubber(folders: Iterable[Path]) -> re.Pattern[str]:
    """A pattern matching any path inside ``folders`` (longest first), up to the next separator."""
    names = sorted({str(f) for f in folders if len(str(f)) > 1}, key=len, reverse=True)
    return re.compile("(?:" + "|".join(re.escape(n) for n in names) + r")[^\s'\",;)]*")


def error_response(scrub: re.Pattern[str], status: int, detail: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one way an error leaves the server."""
    return JSONResponse({"detail": scrub.sub("<server file>", detail)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, folders: Iterable[Path]) -> None:
    """Map exception classes to status codes; ``folders`` (work and temp folders) never reach a client."""
    scrub = path_scrubber([*folders, Path(tempfile.gettempdir()).resolve(), Path(tempfile.gettempdir())])

    def handle(status: int, headers: dict[str, str] | None = None):  # noqa: ANN202 - a decorator factory
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            extra = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else {}
            return error_response(scrub, status, str(exc), {**(headers or {}), **extra} or None)
        return handler

    for classes, status, headers in [
        ((UnknownImage,), 404, None),
        ((UploadTooLarge,), 413, {"Connection": "close"}),  # the rest of the body is not read
        ((RasterInputError, UploadRejected, QuestionError), 422, None),
        ((ServerFault,), 500, None),
        ((QueueFull, RenderCancelled), 503, None),
        ((QueueTimeout,), 504, None),
        ((OverflowError,), 507, None),  # a full image store or work folder
    ]:
        for cls in classes:
            app.add_exception_handler(cls, handle(status, headers))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # One sentence for people (the page shows it), the structured list for programs.
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'request'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": scrub.sub("<server file>", "; ".join(parts)),
                             "errors": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(scrub, 500, "internal server error (the server log has the details)")
