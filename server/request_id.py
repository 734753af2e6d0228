"""Request ids: honour the client's ``X-Request-Id`` or assign one, echo it, and log with it.

vLLM's serving layer uses the same header as its request id, so the id also tags the engine's
own log lines and names the request for ``abort``.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("corrigo.access")

HEADER = b"x-request-id"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(HEADER)
        if not request_id:
            request_id = uuid.uuid4().hex.encode()
            scope["headers"] = [*scope["headers"], (HEADER, request_id)]
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(
                "%s %s %s %d %.3fs",
                request_id.decode(errors="replace"),
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - started,
            )
