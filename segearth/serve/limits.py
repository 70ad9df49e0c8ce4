"""Limits on what a client sends, checked before any work is done.

Every refusal is an exception carrying one readable sentence; :mod:`.app` maps each class to its
status code. The request body of everything but an upload is capped by :class:`BodyLimit` before
FastAPI parses it, so a client cannot make the server buffer or decode a huge JSON document.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InputError
from .errors import error_response

STORED_QUESTION_CHARS = 200  # copy of the question in each polygon and GeoTIFF tag (the API keeps it whole)


class QuestionError(InputError):
    """A question the model cannot take (empty, too long, too many): answered with 422."""


class StoreFull(Exception):
    """The server holds as much as it may (images, or disk in its work folder): answered with 409, since the
    client can free room by deleting images. A class of our own: a builtin OverflowError from anywhere else
    must never read as "delete some images"."""


class DiskFull(StoreFull):
    """The work folder is at its disk budget."""


def clip_text(text: str, limit: int = STORED_QUESTION_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_questions(questions: list[str], max_questions: int, max_chars: int, max_tokens: int,
                    count_tokens: Callable[[str], int]) -> None:
    """Refuse a request whose questions the server will not queue (QuestionError).

    Characters are checked before tokens, so the tokenizer never sees more than ``max_chars``.
    """
    if not questions:
        raise QuestionError("no question given")
    if len(questions) > max_questions:
        raise QuestionError(f"{len(questions)} questions in one request; this server allows at most {max_questions}")
    for i, q in enumerate(questions):
        prefix = f"question {i + 1}: " if len(questions) > 1 else ""
        if not q.strip():
            raise QuestionError(prefix + "the question is empty")
        if len(q) > max_chars:
            raise QuestionError(f"{prefix}the question is {len(q)} characters long; "
                                f"this server allows at most {max_chars}")
        tokens = count_tokens(q)
        if tokens > max_tokens:
            raise QuestionError(f"{prefix}the question is {tokens} tokens long; "
                                f"this server allows at most {max_tokens}")


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 before the app reads it.

    A declared ``Content-Length`` is checked first; a chunked body is counted while it arrives and
    buffered (at most ``max_bytes``), then replayed to the app. Requests for which ``exempt(scope)``
    is true (uploads, which stream to disk under their own limit) pass untouched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Callable[[Scope], bool]) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refusal()(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refusal()(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # only a disconnect can come now
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _refusal(self) -> ASGIApp:
        return error_response(413, f"the request body is larger than the limit of {self.max_bytes // 1024} KB",
                              {"Connection": "close"})
