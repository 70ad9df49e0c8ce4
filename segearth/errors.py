"""How every command reports a user error: one readable line on stderr, exit code 2.

A user error is bad input (a missing or corrupt file, an unknown band, an empty question, an
unwritable folder, a broken checkpoint). Its message names the file and the problem, so a traceback
would only hide it; ``--debug`` re-raises to show one.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def exit_with_user_error(exc: BaseException, debug: bool) -> NoReturn:
    """Print ``exc`` as ``error: <message>`` and exit 2 (re-raise with ``debug``)."""
    if debug:
        raise exc
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
