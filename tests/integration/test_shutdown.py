"""Overload, shutdown and engine faults, each on a dedicated server with a tiny model (these
tests saturate, stop or break their server, which the shared session engine must not see).

- Admission control: beyond the running and waiting limits, 429 with ``Retry-After``.
- Per-key rate limits through the OpenAI SDK.
- SIGTERM drains in-flight requests up to ``server.graceful_shutdown_seconds``, aborts the rest,
  and leaves no process behind (the vLLM engine core runs in a child process that, orphaned,
  ignores SIGTERM).
- A dead engine-core process turns /ready and every request into a quick 503: on the tensor-
  parallel server of tests/integration/test_distributed.py, its last test.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support import TEST_ENGINE, LiveServer, start_server, write_config

pytestmark = pytest.mark.engine

GRACE_SECONDS = 6
MODEL = "busy-model"
KEYS = ["key-admission", "key-rate", "key-other", "key-drain"]
#: Longer than any test waits: ends only by an abort (TEST_ENGINE's context is 2048).
LONG = {"max_tokens": 2000, "ignore_eos": True}


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    # The embedded SmolLM2 (about 20 tokens/s here), not the tiny model: its long requests
    # outlast every wait below by far, and the engine leaves the machine some CPU.
    tmp = tmp_path_factory.mktemp("busy")
    config = write_config(
        tmp / "corrigo.toml",
        {
            "model": {"served_model_name": MODEL},
            "engine": TEST_ENGINE,
            "server": {"graceful_shutdown_seconds": GRACE_SECONDS},
            "auth": {"api_keys": KEYS},
            "limits": {
                "max_running_requests": 2,
                "max_waiting_requests": 1,
                # One a minute: the burst below cannot refill while a slow machine serves it.
                "requests_per_minute": 1,
                "rate_limit_burst": 5,
            },
        },
    )
    server = start_server(config, tmp / "server.log")
    yield server
    server.stop(signal.SIGKILL)


class Stream:
    """A streaming completion read in a thread; records its lines and how it ended."""

    def __init__(self, server: LiveServer, key: str, **body) -> None:
        self.lines: list[str] = []
        self.first = threading.Event()
        self.ended = threading.Event()
        self.status: int | None = None
        self._close = threading.Event()
        body = {"prompt": "a", "stream": True, **body}
        self._thread = threading.Thread(target=self._run, args=(server, key, body), daemon=True)
        self._thread.start()

    def _run(self, server: LiveServer, key: str, body: dict) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        try:
            with httpx.stream(
                "POST", f"{server.base_url}/v1/completions", json=body, headers=headers, timeout=120
            ) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.first.set()
                    if self._close.is_set():
                        break
        except httpx.HTTPError:
            pass
        finally:
            self.first.set()
            self.ended.set()

    @property
    def done(self) -> bool:
        return "data: [DONE]" in self.lines

    @property
    def tokens(self) -> int:
        return sum(1 for line in self.lines if line.startswith('data: {"id"'))

    def close(self) -> None:
        self._close.set()
        assert self.ended.wait(30)


def metric(server: LiveServer, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def until(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout
        time.sleep(0.05)
    return time.monotonic() - started


def test_admission_queues_up_to_the_limit_then_answers_429(busy_server):
    streams = [Stream(busy_server, "key-admission", **LONG) for _ in range(2)]
    assert all(s.first.wait(60) and s.status == 200 for s in streams)

    auth = {"Authorization": "Bearer key-admission"}
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2}
    queued: dict[str, httpx.Response] = {}
    waiter = threading.Thread(
        target=lambda: queued.setdefault(
            "r",
            # Waits until a stream below is closed: far longer than httpx's default 5 s, and
            # a client that gives up leaves the queue, which the wait for the gauge would miss.
            httpx.post(
                f"{busy_server.base_url}/v1/completions", json=body, headers=auth, timeout=120
            ),
        )
    )
    waiter.start()
    until(lambda: metric(busy_server, "corrigo_requests_waiting") == 1, 60)
    assert metric(busy_server, "corrigo_requests_running") == 2

    started = time.monotonic()
    r = httpx.post(f"{busy_server.base_url}/v1/completions", json=body, headers=auth, timeout=30)
    # At once, not after a slot frees (the long streams run for minutes).
    assert time.monotonic() - started < 10
    assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("rate_limit_error", "server_overloaded")

    streams[0].close()  # a slot frees: the waiting request runs
    waiter.join(30)
    assert queued["r"].status_code == 200, queued["r"].text
    streams[1].close()
    until(lambda: metric(busy_server, "corrigo_requests_running") == 0, 10)
    until(lambda: metric(busy_server, "vllm:num_requests_running") == 0, 10)


def test_per_key_rate_limit_through_the_sdk(busy_server):
    def client(key):
        return openai.OpenAI(base_url=f"{busy_server.base_url}/v1", api_key=key, max_retries=0)

    limited, other = client("key-rate"), client("key-other")
    for _ in range(5):  # the burst
        limited.completions.create(model=MODEL, prompt="a", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        limited.completions.create(model=MODEL, prompt="a", max_tokens=1)
    assert 0 < int(err.value.response.headers["retry-after"]) <= 60  # one a minute
    assert err.value.code == "rate_limit_exceeded"
    other.completions.create(model=MODEL, prompt="a", max_tokens=1)


def test_sigterm_drains_within_the_grace_period_then_aborts_leaving_no_process(busy_server):
    parent = psutil.Process(busy_server.pid)
    family = parent.children(recursive=True)
    assert any("EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name() for p in family)

    long = Stream(busy_server, "key-drain", **LONG)
    assert long.first.wait(60)
    # Tokens a second now, to size a request that fits in the grace period with room to spare.
    before, t0 = long.tokens, time.monotonic()
    time.sleep(1.0)
    rate = (long.tokens - before) / (time.monotonic() - t0)
    short_tokens = max(8, int(rate * GRACE_SECONDS / 4))
    assert rate * GRACE_SECONDS * 1.5 < LONG["max_tokens"], f"{rate:.0f} tok/s: too fast"
    short = Stream(busy_server, "key-drain", max_tokens=short_tokens, ignore_eos=True)
    assert short.first.wait(60)

    started = time.monotonic()
    busy_server.process.send_signal(signal.SIGTERM)
    busy_server.process.wait(timeout=60)
    elapsed = time.monotonic() - started
    assert short.ended.wait(10) and long.ended.wait(10)

    assert short.done and any('"finish_reason":"length"' in line for line in short.lines)
    # Aborted: the stream ends without a finish reason (cut off, or vLLM's error event when
    # the engine stops under it), never as a complete generation.
    finished = [line for line in long.lines if '"finish_reason":"' in line]
    assert finished == [] and long.tokens < LONG["max_tokens"], long.lines[-3:]
    assert GRACE_SECONDS - 1 < elapsed < GRACE_SECONDS + 10, f"exited after {elapsed:.1f}s"
    print(
        f"{rate:.0f} tok/s; short ({short_tokens} tokens) drained; long aborted; exit {elapsed:.1f}s"
    )
    time.sleep(1)  # let the kernel reap
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [p.cmdline() for p in alive]
