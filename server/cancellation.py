"""One request's cancellation scope: whatever it runs stops when its client goes away.

vLLM aborts a request in the engine when the task iterating its output is cancelled, which
frees its batch slot before the next decode step. :class:`CancelScope` ties that to the
client: :meth:`CancelScope.run` races each piece of work against the scope's cancellation,
so a driver that makes several engine calls for one request (e.g. refinement rounds) runs each
through the same scope and stops at the first round the client is no longer there for::

    scope = CancelScope.for_request(raw)
    try:
        for _ in range(rounds):
            result = await scope.run(generate(...))
            if result is None:  # cancelled; the engine already aborted the round
                break
    finally:
        scope.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class CancelScope:
    """Cancelled by :meth:`cancel`, or by the client's disconnect when bound to a request."""

    def __init__(self) -> None:
        self._cancelled = asyncio.Event()
        self.reason: str | None = None
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    def for_request(cls, raw: Request) -> CancelScope:
        """A scope that cancels itself when ``raw``'s client disconnects. Call it once the
        body has been read: the next ASGI message can then only be the disconnect."""
        scope = cls()
        scope._watch = asyncio.ensure_future(scope._watch_disconnect(raw))
        return scope

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self, reason: str) -> None:
        if not self._cancelled.is_set():
            self.reason = reason
            self._cancelled.set()

    async def run(self, work: Awaitable[T]) -> T | None:
        """``await work``, unless the scope is cancelled first: then ``work`` is cancelled
        (aborting its engine request) and None is returned."""
        task = asyncio.ensure_future(work)
        if self.cancelled:
            task.cancel()
            return None
        stop = asyncio.ensure_future(self._cancelled.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            stop.cancel()
        if task.cancelled():
            return None
        return task.result()

    def close(self) -> None:
        """Stop watching the client (the response is complete)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _watch_disconnect(self, raw: Request) -> None:
        while (await raw.receive())["type"] != "http.disconnect":
            pass
        self.cancel("client disconnected")
