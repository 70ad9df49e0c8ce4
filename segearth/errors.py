"""The project's exceptions for user errors, and how every command reports an error.

A user error is bad input (a missing or corrupt file, an unknown band, an empty question, an
unwritable folder, a broken checkpoint, a wrong config value). It is raised as a
:class:`SegEarthError` subclass (or one of the builtin file errors in :data:`FILE_ERRORS`), whose
message names the file and the problem, so a traceback would only hide it: it is printed as one line
on stderr, exit code 2. Anything else is a bug in segearth: its traceback is printed with a request
to report it, exit code 1. ``--debug`` re-raises either.

The user-error classes subclass ``ValueError`` (``ModelNotFoundError``: ``FileNotFoundError``), so
code that caught those before keeps working.
"""

from __future__ import annotations

import traceback
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape


class SegEarthError(Exception):
    """Base of the user errors: the message alone tells the user what to fix."""


class InputError(SegEarthError, ValueError):
    """Bad input: an image, a raster window, a band list, a question, a manifest, an option value."""


class ConfigError(SegEarthError, ValueError):
    """A configuration that cannot be used; the message names the key and what was expected."""


class ModelNotFoundError(SegEarthError, FileNotFoundError):
    """A model name or folder that names no model."""


class UnsupportedError(ConfigError):
    """A feature the chosen model cannot do (e.g. LoRA on nano's MiniLM)."""


FILE_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, FileExistsError, PermissionError)

# What a command catches and hands to :func:`exit_with_user_error`. A plain ValueError (or any other
# builtin) is not among them: raised by segearth, it is a bug, and shows its traceback.
USER_ERRORS: tuple[type[Exception], ...] = (SegEarthError, *FILE_ERRORS)

REPORT_REQUEST = ("this is a bug in segearth, not a problem with your input: please report it at the "
                  "project's issue tracker with the command you ran and the traceback above")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (one line) rather than a bug (traceback + report)."""
    return isinstance(exc, USER_ERRORS)


def exit_with_user_error(exc: BaseException, debug: bool) -> NoReturn:
    """Report ``exc`` and exit: a user error as ``error: <message>`` (exit 2), anything else as a bug,
    with its traceback and :data:`REPORT_REQUEST` (exit 1). ``debug`` re-raises."""
    if debug or isinstance(exc, (click.exceptions.Exit, click.exceptions.Abort, click.ClickException)):
        raise exc  # click's own exits and usage errors (and --debug) go through click
    console = Console(stderr=True)
    if is_user_error(exc):
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)
    report_bug(exc, console)
    raise typer.Exit(code=1)


def report_bug(exc: BaseException, console: Console | None = None) -> None:
    """Print the traceback of an internal error and ask for a report."""
    console = console or Console(stderr=True)
    console.print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(),
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"[bold red]internal error:[/] {escape(REPORT_REQUEST)}", highlight=False, soft_wrap=True)
