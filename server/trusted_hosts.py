"""``[server] trusted_hosts``: refuse requests addressed to a host name this server is not.

A web page cannot read answers from another origin, unless DNS rebinding makes its own name
resolve to this server's address: then the browser sends the page's host name in ``Host``.
Checking ``Host`` against the names clients really use turns those requests away (400, the
OpenAI error object). /health answers any host: orchestrators probe by address, and it says
nothing ("ok").
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_body

logger = logging.getLogger(__name__)

#: Paths served whatever the Host header says.
EXEMPT_PATHS = frozenset({"/health"})


def host_name(header: str) -> str:
    """The host of a ``Host`` header value, without port, lower-cased; an IPv6 address
    compressed and without brackets (as server/config.py stores trusted hosts)."""
    header = header.strip().lower()
    if not header.startswith("["):
        return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    try:
        return ipaddress.IPv6Address(header[1 : header.find("]")]).compressed
    except ValueError:
        return ""


class TrustedHostMiddleware:
    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(raw) in self.hosts:
            await self.app(scope, receive, send)
            return
        logger.info("refused a request for host %r (not in [server] trusted_hosts)", raw)
        body = json.dumps(
            error_body(
                400,
                "This server does not serve the host named in the Host header.",
                code="untrusted_host",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
