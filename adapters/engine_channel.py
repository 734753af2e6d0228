"""The channel per-step figures take from the engine to the server: one message per engine
step, pushed by the engine's output rank, pulled by the server.

Engine processes may run on other nodes (Ray), so nothing is shared through files: the server
binds a ZeroMQ PULL socket at start-up and names it in the deployment manifest
(adapters/manifest.py); the output rank's logits processor connects a PUSH socket to it. Each
message is ``[mac, payload]``, the payload JSON of a :class:`StepMessage` and the mac its
HMAC-SHA256 under the manifest's per-start key, so another process that can reach the socket
cannot add figures (the channel is authenticated, not encrypted: on several nodes keep it on
the cluster's private network; docs/deployment.md).

The engine never waits on the channel: a message the socket cannot queue (the server stopped
reading) is dropped and counted, and the server's report for that request then waits in vain
for its steps, up to a bound (adapters/request_reports.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from .manifest import ReportChannel

logger = logging.getLogger(__name__)

#: Messages the engine side queues while the server is slow to read (each is one step's
#: figures, well under a kilobyte per corrected row), then drops.
SEND_QUEUE = 100_000


class ChannelError(ValueError):
    """The channel cannot be opened as configured; the message says what to set."""


@dataclass(frozen=True)
class StepMessage:
    """One engine step's figures: each plugin's time for the step, and for each row that
    carries a report ticket, ``[slot, generation, uid, position, *values]`` (values in the
    order of the registry's figures (decoding/registry.py); ``uid`` tells rows of one request apart,
    ``position`` is how many tokens the row had generated before this step)."""

    timings: Mapping[str, float] = field(default_factory=dict)
    rows: Sequence[Sequence[float]] = ()

    def encode(self) -> bytes:
        return json.dumps(
            {"timings": dict(self.timings), "rows": [list(r) for r in self.rows]},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, payload: bytes) -> StepMessage:
        data = json.loads(payload)
        return cls(dict(data["timings"]), data["rows"])


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _tcp_endpoint(host: str, port: int | str) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class FigureReceiver:
    """The server's end: bound at construction (so the endpoint can go into the manifest
    before the engine starts), read by :meth:`run` on the server's event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ChannelError(
                f"server.report_host {host!r} must be an IP address of this host"
            ) from None
        if address.is_unspecified:
            raise ChannelError(
                f"server.report_host {host!r} is a wildcard; set the address of this host the "
                "engine's nodes connect to (127.0.0.1 when they all run here)"
            )
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.ipv6 = address.version == 6
        try:
            self._socket.bind(_tcp_endpoint(address.compressed, port or "*"))
        except zmq.ZMQError as exc:
            self.close()
            raise ChannelError(
                f"cannot open the report channel on {host} port {port or 'any'}: {exc}"
            ) from None
        endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._key = secrets.token_bytes(32)
        self.channel = ReportChannel(endpoint=endpoint, key=self._key.hex())
        #: Messages refused for a wrong or missing MAC, or a malformed payload.
        self.refused = 0

    async def run(self, handle: Callable[[StepMessage], None]) -> None:
        """Receive until cancelled, passing each authentic message to ``handle``."""
        while True:
            frames = await self._socket.recv_multipart()
            message = self.verify(frames)
            if message is None:
                continue
            try:
                handle(message)
            except Exception:  # one bad message must not stop the reports of all others
                logger.exception("could not file a report-channel message")

    def verify(self, frames: Sequence[bytes]) -> StepMessage | None:
        """The message ``frames`` carry when their MAC is this channel's; else None."""
        if len(frames) == 2 and hmac.compare_digest(frames[0], _mac(self._key, frames[1])):
            try:
                return StepMessage.decode(frames[1])
            except (ValueError, KeyError, TypeError):
                pass
        self.refused += 1
        if self.refused == 1:
            logger.warning("refused a report-channel message that was not signed by the engine")
        return None

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.close()
            self._context.term()


@contextmanager
def _threads_started_elsewhere() -> Iterator[None]:
    """Threads started inside get the CPUs this process may use other than the calling
    thread's own, where there are such CPUs (the calling thread's affinity is restored after).

    A thread inherits its creator's CPU affinity. vLLM's CPU engine binds its engine thread to
    its cores (OpenMP places); ZeroMQ's I/O thread, started with a context's first socket,
    would share them, and every message it wakes for preempts the engine's step on that core
    (bench.copilot at concurrency 1: a step's send took ~0.46 ms of wall time for ~0.17 ms of
    its own CPU; with the I/O thread on another core, ~0.19 ms, all of it its own).
    """
    if not hasattr(os, "sched_getaffinity"):  # not Linux: no binding to inherit
        yield
        return
    own = os.sched_getaffinity(0)
    others = set(range(os.cpu_count() or 1)) - own
    try:
        os.sched_setaffinity(0, others)  # the kernel keeps the permitted ones, or refuses
    except (OSError, ValueError):
        yield  # no other CPU to use: the threads share the engine's, as before
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


class FigureSender:
    """The engine's end (on the output rank only): sends without ever blocking the step (its
    I/O thread runs off the engine thread's cores where there are others)."""

    def __init__(self, channel: ReportChannel) -> None:
        self._key = bytes.fromhex(channel.key)
        with _threads_started_elsewhere():
            self._context = zmq.Context()
            self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, SEND_QUEUE)
        self._socket.setsockopt(zmq.LINGER, 1000)  # flush what is queued at shutdown, briefly
        self._socket.ipv6 = channel.endpoint.startswith("tcp://[")
        self._socket.connect(channel.endpoint)
        #: Messages dropped because the queue was full.
        self.dropped = 0

    def send(self, message: StepMessage) -> None:
        payload = message.encode()
        try:
            self._socket.send_multipart([_mac(self._key, payload), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "the server reads no step figures: dropping them (reports lack them)"
                )

    def close(self) -> None:
        self._socket.close()
        self._context.term()
