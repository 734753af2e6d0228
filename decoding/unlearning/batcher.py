"""Concurrent gated requests' sentence embeddings in one forward (the gate's micro-batcher).

Each request hands in its pieces ``P_r`` (:func:`.gate.chunks`) and what to compute from their
embeddings, ``finish_r``. A batch takes the waiting requests in arrival order while their
pieces number at most :data:`BATCH_PIECES` (always at least one request), embeds the union of
their distinct pieces ``U`` once, ``E = encode(U)``, and gives each request ``r`` the rows of its
own pieces, in its own order::

    result_r = finish_r(E[index_U(p) for p in P_r])

so a request's result is what ``finish_r(encode(P_r))`` gives, up to float noise (a piece's
embedding does not depend on the batch's other texts: decoding/unlearning/embeddings.py packs
texts into shared rows, each attending to its own word pieces only). With a :class:`.piece_cache.PieceCache`, ``U`` is only the pieces
the cache lacks; the others' rows come from the cache (each encoded once, in an earlier
batch). The encode and every ``finish_r`` run on the gate's thread, never on the event loop.
A request only ever receives its own result or its own error:

- an encode that fails for the batch is retried for each request alone, so a text that
  breaks the encoder fails its request only;
- an error in one ``finish_r`` fails that request only;
- a request cancelled while it waits is left out of its batch; one cancelled during the
  forward has its result dropped.

Nothing fails open: every error reaches its request's awaiter as an exception. Waiting
requests are bounded (:data:`MAX_WAITING`; admission already bounds them to the server's
running requests), and a batch waits at most :data:`MAX_WAIT_S` for companions before its
forward; requests arriving during a forward form the next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from .gate import Embedder
from .piece_cache import PieceCache

#: Pieces embedded in one forward at most (a single larger request still gets its own batch).
BATCH_PIECES = 256
#: How long a batch waits for other requests before its forward, in seconds.
MAX_WAIT_S = 0.002
#: Requests waiting for a batch at most (more wait to join the queue).
MAX_WAITING = 1024

T = TypeVar("T")


@dataclass(frozen=True)
class _Job(Generic[T]):
    pieces: tuple[str, ...]
    finish: Callable[[torch.Tensor], T]
    future: asyncio.Future[T]


class EncodeBatcher:
    """Batches one embedder's encodes across concurrent requests (see the module docstring)."""

    def __init__(
        self,
        embedder: Embedder,
        executor: Executor,
        batch_pieces: int = BATCH_PIECES,
        max_wait_s: float = MAX_WAIT_S,
        max_waiting: int = MAX_WAITING,
        cache: PieceCache | None = None,
    ) -> None:
        """``cache``: embeddings of pieces already read, shared by the batches (None: every
        batch encodes all of its pieces)."""
        self.embedder = embedder
        self.cache = cache
        self.executor = executor
        self.batch_pieces = batch_pieces
        self.max_wait_s = max_wait_s
        self._waiting: deque[_Job[Any]] = deque()
        self._slots = asyncio.Semaphore(max_waiting)
        self._worker: asyncio.Task[None] | None = None
        #: Forwards run so far (for tests and the benchmark's accounting).
        self.batches = 0

    async def run(self, pieces: Sequence[str], finish: Callable[[torch.Tensor], T]) -> T:
        """``finish(encode(pieces))``, computed in a batch with the requests waiting beside
        this one."""
        async with self._slots:
            loop = asyncio.get_running_loop()
            job: _Job[T] = _Job(tuple(pieces), finish, loop.create_future())
            self._waiting.append(job)
            if self._worker is None or self._worker.done():
                self._worker = loop.create_task(self._drain())
            return await job.future

    async def _drain(self) -> None:
        """Form and run batches until nobody waits."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            if self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)
            batch = self._take()
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(self.executor, self._compute, batch)
            except BaseException as exc:  # the thread pool itself failed: fail every member
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError("gate stopped")
                        )
                if not isinstance(exc, Exception):
                    self._fail_waiting()
                    raise
                continue
            self.batches += 1
            for job, (ok, value) in zip(batch, outcomes, strict=True):
                if job.future.done():  # cancelled during the forward
                    continue
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)

    def _take(self) -> list[_Job[Any]]:
        """The next batch: waiting requests in arrival order (cancelled ones dropped) while
        their pieces fit in :attr:`batch_pieces`; at least one."""
        batch: list[_Job[Any]] = []
        size = 0
        while self._waiting:
            job = self._waiting[0]
            if job.future.done():
                self._waiting.popleft()
                continue
            if batch and size + len(job.pieces) > self.batch_pieces:
                break
            batch.append(self._waiting.popleft())
            size += len(job.pieces)
        return batch

    def _fail_waiting(self) -> None:
        while self._waiting:
            job = self._waiting.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the gate's batcher stopped"))

    def _compute(self, batch: list[_Job[Any]]) -> list[tuple[bool, Any]]:
        """On the gate's thread: one encode of the batch's distinct pieces (those not cached),
        then each member's ``finish`` on its own rows: ``(True, result)`` or ``(False, error)``."""
        unique = list(dict.fromkeys(p for job in batch for p in job.pieces))
        try:
            table = self._embed(unique)
        except Exception as exc:
            if len(batch) == 1:
                return [(False, exc)]
            return [self._alone(job) for job in batch]
        index = {p: i for i, p in enumerate(unique)}
        return [self._finish(job, table, index) for job in batch]

    def _alone(self, job: _Job[Any]) -> tuple[bool, Any]:
        """One member encoded by itself (after its batch's encode failed)."""
        unique = list(dict.fromkeys(job.pieces))
        try:
            table = self._embed(unique)
        except Exception as exc:
            return False, exc
        index = {p: i for i, p in enumerate(unique)}
        return self._finish(job, table, index)

    def _embed(self, unique: list[str]) -> torch.Tensor | None:
        """``[len(unique), dim]``: the cached rows, and one encode of the rest (None for no
        pieces). Only a successful encode's rows are cached."""
        if not unique:
            return None
        if self.cache is None:
            return self.embedder.encode(unique)
        found = self.cache.lookup(unique)
        missing = [p for p in unique if p not in found]
        if not missing:
            return torch.stack([found[p] for p in unique])
        fresh = self.embedder.encode(missing)
        rows = dict(zip(missing, fresh, strict=True))
        table = torch.stack([found[p] if p in found else rows[p] for p in unique])
        self.cache.store(missing, fresh)
        return table

    @staticmethod
    def _finish(
        job: _Job[Any], table: torch.Tensor | None, index: dict[str, int]
    ) -> tuple[bool, Any]:
        try:
            if table is None:
                rows = torch.zeros(0, 0)
            else:
                rows = table[torch.tensor([index[p] for p in job.pieces], dtype=torch.long)]
            return True, job.finish(rows)
        except Exception as exc:
            return False, exc
