"""Who may talk to the server: allowed ``Host`` names, same-origin writes, an optional bearer token.

* ``Host``: a name the server was not told about means DNS rebinding (a web page whose domain now
  points at 127.0.0.1) or a misrouted request: 400. Default: the bind address, ``localhost``,
  ``127.0.0.1`` and ``::1``; ``--allowed-host`` adds names, ``*`` allows any.
* ``Origin``: a browser sends it with every cross-origin write; a write (POST, PUT, PATCH, DELETE)
  whose Origin is not the server's own nor one given with ``--cors-origin`` is refused with 403, so
  another site open in the same browser cannot upload, ask or delete. Without ``--cors-origin`` no
  CORS header is sent, so other sites cannot read responses either.
* Token (``--token`` or ``SEGEARTH_TOKEN``): every request needs ``Authorization: Bearer <token>``
  (401 otherwise), except the page and its static files, which hold no data: the page asks for the
  token and keeps it in the tab's sessionStorage. CORS preflights (OPTIONS) carry no credentials and
  pass.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_name(host: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:8000`` -> ``::1``, ``Example.org:80`` -> ``example.org``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware applying the three checks above, in that order, before anything else runs."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str], cors_origins: Iterable[str],
                 token: str | None, public: Callable[[str], bool]) -> None:
        self.app = app
        hosts = {host_name(h) for h in allowed_hosts}
        self.any_host = "*" in hosts
        self.hosts = hosts - {"*"}
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}
        self.token = token.encode() if token else None
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self.any_host and host_name(host) not in self.hosts:
            await error_response(400, f"this server does not answer to the host name {host[:100]!r}; "
                                      "start it with --allowed-host NAME to allow it")(scope, receive, send)
            return
        origin = headers.get("origin")
        own = f"{scope.get('scheme', 'http')}://{host}".lower()
        foreign = origin is not None and origin.rstrip("/").lower() not in {own, *self.cors_origins}
        if scope["method"] in WRITES and foreign:
            assert origin is not None  # a foreign request has an Origin header
            refusal = error_response(403, f"cross-origin request refused: {origin[:100]!r} is not this server's page; "
                                          "start the server with --cors-origin ORIGIN to allow that site")
            await refusal(scope, receive, send)
            return
        if self.token is not None and scope["method"] != "OPTIONS" and not self.public(scope["path"]):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
                await error_response(401, "this server needs its access token: send 'Authorization: Bearer TOKEN'",
                                     {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
