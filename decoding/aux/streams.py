"""Where auxiliary forwards overlap (decoding/aux/overlap.py's lanes, by device).

- CPU, :class:`ThreadOverlap`: a thread per lane. vLLM's CPU worker binds its thread to the
  cores it computes on and leaves the rest to the front end; a lane thread widens its affinity
  to every core the process may use. Proxy-tuning's models run in worker processes on the CPU
  (decoding/aux/remote.py), so there a lane thread only waits on its worker: forwards run on
  the lane thread itself take turns with the engine's for the interpreter lock.
- CUDA, :class:`StreamOverlap`: a CUDA stream per lane. A forward's kernels are queued on its
  lane's stream, so the forwards of different models run concurrently with each other (and
  with the engine's forward queued after them on the caller's stream); CUDA events order them
  with the caller's work.

Stream semantics (PyTorch's "CUDA semantics" notes): work queued on one stream runs in order;
``wait_stream``/``wait_event`` order work across streams without blocking the host. The caching
allocator keys a block to the stream it was allocated on and may hand it out again as soon as
the tensor is freed on the host, for work queued later *on that stream*; a tensor used on
another stream must be marked with ``record_stream`` so that its block waits for that stream's
queued work too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from .overlap import Done, Inline, Overlap, Pending


def overlap_for(device: torch.device) -> Overlap:
    """The lanes auxiliary forwards run on, on ``device``."""
    if device.type == "cpu":
        return ThreadOverlap()
    if device.type == "cuda":
        return StreamOverlap(device)
    return Inline()


def _use_every_core() -> None:
    # Where affinity cannot be set, the thread keeps its creator's cores.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))  # 0: this thread only


class _FuturePending:
    def __init__(self, future: Future[torch.Tensor]) -> None:
        self._future = future

    def result(self) -> torch.Tensor:
        return self._future.result()

    def wait(self) -> None:
        self._future.exception()  # waits; the error, if any, is result()'s


class ThreadOverlap:
    """One thread per lane (created at its first forward), on every core."""

    def __init__(self) -> None:
        self._threads: dict[str, ThreadPoolExecutor] = {}

    def submit(self, lane: str, fn: Callable[..., torch.Tensor], *args: Any) -> Pending:
        thread = self._threads.get(lane)
        if thread is None:
            thread = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="corrigo-aux", initializer=_use_every_core
            )
            self._threads[lane] = thread
        return _FuturePending(thread.submit(fn, *args))


def _tensors(values: tuple[Any, ...]) -> Iterator[torch.Tensor]:
    """The tensors among ``values`` and the values of mappings among them."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, Mapping):
            yield from (v for v in value.values() if isinstance(v, torch.Tensor))


class _StreamPending:
    def __init__(self, value: torch.Tensor, done: torch.cuda.Event, device: torch.device):
        self._value = value
        self._done = done
        self._device = device

    def result(self) -> torch.Tensor:
        caller = torch.cuda.current_stream(self._device)
        caller.wait_event(self._done)  # the caller's later work runs after the forward
        # The block was allocated on the lane's stream: keep it from the lane's next forward
        # until the caller's work queued before the tensor is freed has run.
        self._value.record_stream(caller)
        return self._value

    def wait(self) -> None:
        # The host part of the forward has returned: the model may be touched again. Its
        # kernels are still queued on the lane, but all later work on that model (the next
        # forward, a release that frees its cache) is queued on the same stream or frees
        # blocks the allocator reuses only for that stream: nothing to wait for.
        pass


class StreamOverlap:
    """One CUDA stream per lane (created at its first forward) on ``device``.

    ``submit`` runs ``fn`` on the host at once, with its kernels queued on the lane's stream,
    which first waits for everything already queued on the caller's stream (the inputs the
    caller produced); the returned :class:`Pending` makes the caller's stream wait for the
    lane's work before the caller uses the output.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._streams: dict[str, torch.cuda.Stream] = {}

    def submit(self, lane: str, fn: Callable[..., torch.Tensor], *args: Any) -> Pending:
        stream = self._streams.get(lane)
        if stream is None:
            stream = self._streams[lane] = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream):
                value = fn(*args)
        except Exception as exc:  # taken with the result, as from the other lanes
            return Done(error=exc)
        for tensor in _tensors(args):
            if tensor.device.type == "cuda":
                # Allocated on the caller's stream, read on the lane's: its block must wait
                # for the lane's queued work once the caller frees it.
                tensor.record_stream(stream)
        done = torch.cuda.Event()
        done.record(stream)
        return _StreamPending(value, done, self.device)
