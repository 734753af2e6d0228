"""The process an auxiliary model runs in on the CPU (started by decoding/aux/remote.py).

``python -m decoding.aux.worker FD``: ``FD`` is this end of a socket pair. Messages (pickled,
``multiprocessing.connection`` framing):

- first, from the parent: ``{"path", "dtype", "threads"}``; answered ``("ready", vocab)`` once
  the model is loaded, or ``("error", text)`` (then the worker exits);
- ``("step", rows)``, ``rows`` a list of ``(key, length, tokens)``: ``tokens`` is the row's whole
  stream when ``len(tokens) == length``, else its one newest token, appended to what the worker
  holds for ``key``; rows absent from a step are released (decoding/aux/runner.py's ``step``).
  Answered ``("logits", rows, vocab)`` followed by the float32 logits' bytes, or
  ``("error", text)``;
- ``("release", key)``: not answered.

The worker exits when the parent's end closes (the parent exited or closed it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import traceback
from multiprocessing.connection import Connection

import torch

from decoding.pipeline import TokenStream

from .runner import AuxModelRunner


def _use_every_core() -> None:
    # The parent may be bound to one core (vLLM's CPU worker binds its thread); the worker's
    # forwards are meant to run beside it, on any core the process may use.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def _streams(held: dict[int, list[int]], rows: list[tuple[int, int, list[int]]]):
    """Each row's whole stream, from what the parent sent and what the worker held."""
    stepped = {key for key, _, _ in rows}
    for key in [k for k in held if k not in stepped]:
        del held[key]
    streams = {}
    for key, length, tokens in rows:
        if len(tokens) == length:
            held[key] = list(tokens)
        else:
            stream = held.get(key)
            if stream is None or len(stream) != length - 1 or len(tokens) != 1:
                raise RuntimeError(f"row {key}: the worker holds no stream it can extend")
            stream.append(tokens[0])
        streams[key] = TokenStream(held[key], ())
    return streams


def serve(conn: Connection) -> None:
    """Load the model the parent names, then answer its steps until it closes the connection."""
    _use_every_core()
    setup = conn.recv()
    torch.set_num_threads(setup["threads"])
    try:
        runner = AuxModelRunner(setup["path"], dtype=getattr(torch, setup["dtype"]))
    except Exception as exc:  # the parent raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", runner.vocab_size))
    held: dict[int, list[int]] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "release":
            held.pop(message[1], None)
            runner.release(message[1])
            continue
        try:
            logits = runner.step(_streams(held, message[1])).contiguous()
        except Exception:  # the parent raises it with the step's result
            held.clear()  # the parent resends whole streams after an error
            conn.send(("error", traceback.format_exc()))
            continue
        conn.send(("logits", logits.shape[0], logits.shape[1]))
        conn.send_bytes(logits.numpy().data.cast("B"))


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    serve(Connection(sock.detach()))


if __name__ == "__main__":
    main()
