"""Admission control: a bounded number of running requests, a bounded queue, then 429.

vLLM itself queues every request it is given without limit; under overload that turns into
unbounded memory and latency. corrigo admits at most ``max_running`` generation requests at
once, lets at most ``max_waiting`` more wait (first come, first served) for a slot, and answers
everything beyond with 429 and ``Retry-After`` so clients back off instead of piling up.
Per-key rate limits (:class:`RateLimiter`) bound how often one client may ask at all.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import time
from collections.abc import Callable

from .errors import APIError


class AdmissionControl:
    """Counts running requests and queues waiting ones, both bounded.

    ``max_running=None`` admits everything (the queue is never used).
    """

    def __init__(
        self, max_running: int | None, max_waiting: int, *, retry_after_seconds: int = 1
    ) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.retry_after_seconds = retry_after_seconds
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> Slot:
        """A running slot, after waiting in line if need be; 429 when the line is full."""
        if self.max_running is None or (self.running < self.max_running and not self._waiters):
            self.running += 1
            return Slot(self._release)
        if len(self._waiters) >= self.max_waiting:
            raise APIError(
                429,
                f"The server is at capacity ({self.running} requests running, "
                f"{len(self._waiters)} waiting); retry after {self.retry_after_seconds} s.",
                code="server_overloaded",
                headers={"Retry-After": str(self.retry_after_seconds)},
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            # Gone while waiting (client disconnect, shutdown). A slot handed over in the
            # same instant is passed on, not lost.
            if turn.done() and not turn.cancelled():
                self._release()
            else:
                self._waiters.remove(turn)
            raise
        return Slot(self._release)

    def _release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes to the next in line: running unchanged
                return
        self.running -= 1


class Slot:
    """A running slot; :meth:`release` is idempotent so every exit path may call it."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


def rate_limiter(per_minute: int | None, burst: int | None = None) -> RateLimiter | None:
    """The per-client limiter for ``[limits] requests_per_minute`` and ``rate_limit_burst``;
    None (no limit) without a rate."""
    return RateLimiter(per_minute, burst) if per_minute is not None else None


class RateLimiter:
    """Per-client token buckets: ``per_minute`` requests a minute, bursts up to ``burst``.

    Clients are told apart by their API key (only a hash of it is kept), or by their address
    when the server has no keys.
    """

    def __init__(
        self,
        per_minute: int,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else per_minute)
        self.clock = clock
        self.max_clients = max_clients
        #: client -> (tokens, time of last update); insertion order = least recently seen first.
        self._buckets: collections.OrderedDict[bytes, tuple[float, float]] = (
            collections.OrderedDict()
        )

    def check(self, client: str) -> None:
        """Take one token from ``client``'s bucket; 429 with ``Retry-After`` when empty."""
        key = hashlib.blake2b(client.encode(), digest_size=16).digest()
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise APIError(
                429,
                f"Rate limit reached: {self.rate * 60:g} requests per minute for this API key; "
                f"retry after {wait} s.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_clients:  # bound the table itself
            self._buckets.popitem(last=False)
