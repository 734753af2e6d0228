"""An auxiliary model in a process of its own (decoding/aux/worker.py), for the CPU.

Why a process: a forward of an eager transformers model spends most of its time in Python and
in small operators that hold the interpreter lock; the engine's own forward does too. On a
thread of the engine's process (decoding/aux/streams.py's lanes) the auxiliary forwards and
the engine's therefore take turns instead of overlapping, and a proxy-tuned step costs the sum
of the three forwards however many cores are free. In its own process a model's forward runs
beside the engine's; the lane thread only sends the step and waits on the socket, without the
lock.

Traffic per step: each row's newest token (its whole stream when it joins or its cache no
longer matches), and back ``rows x vocab`` float32 logits. The worker holds the rows' caches;
:class:`RemoteRunner` remembers only each row's length as last sent, to know what the worker
can extend.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping
from multiprocessing.connection import Connection

import torch

from decoding.pipeline import TokenStream

from .dtypes import dtype_name

#: Seconds a closing worker gets to exit before it is killed.
_EXIT_GRACE = 10.0


def _stop(conn: Connection, process: subprocess.Popen) -> None:
    conn.close()  # the worker exits at EOF
    try:
        process.wait(_EXIT_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RemoteRunner:
    """decoding/aux/runner.py's ``AuxModelRunner`` (``step``, ``release``, ``vocab_size``) for a
    model loaded in a worker process, with as many torch threads as this process has.

    The constructor starts the worker and returns; :meth:`ready` waits for the model to load
    (raising its error), so that several workers load at once. One step or release at a time
    (a lane runs its forwards in order); the worker exits when this runner is closed or
    garbage-collected, or when this process exits.
    """

    def __init__(self, path: str, *, dtype: torch.dtype = torch.float32) -> None:
        self.path = path
        ours, theirs = socket.socketpair()
        # The worker imports this package from wherever this process does.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with ours, theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "decoding.aux.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
            self._conn = Connection(ours.detach())
        self._lock = threading.Lock()
        self._sent: dict[int, int] = {}  # row key -> its stream's length in the worker
        self._vocab: int | None = None
        self._close = weakref.finalize(self, _stop, self._conn, self.process)
        self._send({"path": path, "dtype": dtype_name(dtype), "threads": torch.get_num_threads()})

    def ready(self) -> RemoteRunner:
        """Wait until the worker has loaded the model; raise ``ValueError`` if it could not."""
        if self._vocab is None:
            kind, value = self._receive()
            if kind != "ready":
                self.close()
                raise ValueError(f"{self.path}: {value}")
            self._vocab = value
        return self

    @property
    def vocab_size(self) -> int:
        return self.ready()._vocab

    def step(self, streams: Mapping[int, TokenStream]) -> torch.Tensor:
        """Next-token logits ``[len(streams), vocab]`` (float32), as ``AuxModelRunner.step``."""
        self.ready()
        rows = []
        for key, stream in streams.items():
            extends = self._sent.get(key) == len(stream) - 1
            rows.append((key, len(stream), [stream.last] if extends else stream.tokens()))
        with self._lock:
            self._send(("step", rows))
            kind, *shape = self._receive()
            if kind != "logits":
                self._sent = {}  # the worker forgot every row's stream: resend them whole
                raise RuntimeError(f"{self.path}: the forward failed in its worker:\n{shape[0]}")
            self._sent = {key: len(stream) for key, stream in streams.items()}
            logits = torch.empty(shape, dtype=torch.float32)
            try:
                self._conn.recv_bytes_into(logits.numpy().data.cast("B"))
            except (EOFError, OSError) as exc:
                raise self._ended() from exc
        return logits

    def release(self, key: int) -> None:
        """Forget a row in the worker (its request left the batch)."""
        with self._lock:
            self._sent.pop(key, None)
            # A worker that has ended holds nothing; the next step raises that it ended.
            with contextlib.suppress(OSError):
                self._conn.send(("release", key))

    def close(self) -> None:
        """Stop the worker (waits for it to exit)."""
        self._close()

    def _send(self, message) -> None:
        try:
            self._conn.send(message)
        except OSError as exc:
            raise self._ended() from exc

    def _receive(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._ended() from exc

    def _ended(self) -> RuntimeError:
        try:
            code = self.process.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(f"{self.path}: the auxiliary model's worker process ended ({code=})")
