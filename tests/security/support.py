"""What the hostile-client suite observes the server with, from the outside.

- :class:`LoopbackListener`: a TCP listener on 127.0.0.1 that records every connection made to
  it (so a test can assert that an attack reached no host), and optionally answers HTTP or holds
  the connection open without answering (a slow remote).
- :class:`LoopProbe`: polls ``/health`` while an attack runs; a server whose event loop is
  blocked answers late, so the largest latency it saw measures the loop's responsiveness.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx

#: The most a /health probe may take while an attack runs. A blocked event loop shows as the
#: attack's whole duration (a catastrophic pattern, a hanging host, a gate embedding a megabyte:
#: tens of seconds and more); a loaded 2-core CI machine has delayed an idle loop's answer by
#: 1.3 s while the engine process generated beside it.
MAX_PROBE_SECONDS = 3.0


@dataclass
class Connection:
    peer: tuple[str, int]
    #: The first bytes the client sent (the HTTP request line and headers, for HTTP clients).
    head: bytes = b""


@dataclass
class LoopbackListener:
    """``with LoopbackListener() as remote:`` then point the attack at ``remote.url``.

    ``mode``: ``"http"`` answers every request with ``status`` and ``body`` (JSON), ``"hang"``
    reads the request and never answers, ``"close"`` closes each connection at once.
    ``host`` may be any loopback address (127.0.0.0/8: another "host" of the same machine),
    ``bind_port`` a fixed port (0: any free one); ``headers`` are added to every HTTP answer.
    """

    mode: str = "http"
    status: int = 200
    body: object = field(default_factory=lambda: {"accepted": True})
    connections: list[Connection] = field(default_factory=list)
    host: str = "127.0.0.1"
    bind_port: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self.bind_port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> LoopbackListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            record = Connection(peer)
            self.connections.append(record)
            threading.Thread(target=self._handle, args=(conn, record), daemon=True).start()

    def _handle(self, conn: socket.socket, record: Connection) -> None:
        self._open.append(conn)
        if self.mode == "close":
            conn.close()
            return
        conn.settimeout(0.5)
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in record.head and not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                record.head += chunk
            if self.mode == "hang":
                self._stop.wait()
                return
            payload = json.dumps(self.body).encode()
            extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
            conn.sendall(
                f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            conn.close()


class LoopProbe:
    """``with LoopProbe(base_url) as probe: <attack>`` then ``probe.worst`` is the slowest
    /health answer (seconds) seen while the attack ran; a probe that got no answer at all
    counts as the time until the block ends."""

    def __init__(self, base_url: str, interval: float = 0.05, timeout: float = 60) -> None:
        self.base_url = base_url
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoopProbe:
        self._thread.start()
        # One answer before the attack, so a probe that never answers is visible.
        deadline = time.monotonic() + 10
        while not self.latencies and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=float("inf"))

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get("/health")
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(self.interval)
