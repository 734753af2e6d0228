"""The report channel over real ZeroMQ sockets: a sender in another process, holding only the
manifest's channel, reaches the server's receiver; a message not signed with the per-start key
is refused; a wildcard or unknown address is refused at start-up."""

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys

import pytest
import zmq

from adapters.engine_channel import ChannelError, FigureReceiver, StepMessage

from ..support import REPO

SENDER = """
import json, sys
from adapters.engine_channel import FigureSender, StepMessage
from adapters.manifest import ReportChannel
sender = FigureSender(ReportChannel(**json.loads(sys.argv[1])))
sender.send(StepMessage({"copilot": 0.002}, [[0, 1, 5, 0, 1, 0.5, 0.9, 0, 0, 0]]))
sender.close()
"""


def test_figures_sent_from_another_process_arrive_and_forgeries_do_not():
    receiver = FigureReceiver()
    key = bytes.fromhex(receiver.channel.key)
    got: list[StepMessage] = []

    async def run() -> None:
        arrived = asyncio.Event()

        def handle(message: StepMessage) -> None:
            got.append(message)
            if len(got) == 2:
                arrived.set()

        task = asyncio.create_task(receiver.run(handle))
        # A local process that knows the endpoint but not the key; its last message is signed
        # with the key, so once that one is in, the two before it were read (one socket keeps
        # its order).
        forger = zmq.Context().socket(zmq.PUSH)
        forger.connect(receiver.channel.endpoint)
        fake = StepMessage({"copilot": 9.0}, [[0, 1, 5, 0, 99, 0, 0, 0, 0, 0]]).encode()
        forger.send_multipart([b"\0" * 32, fake])
        forger.send_multipart([fake])
        signed = StepMessage({"proxy_tuning": 0.001}).encode()
        forger.send_multipart([hmac.new(key, signed, hashlib.sha256).digest(), signed])
        channel = json.dumps({"endpoint": receiver.channel.endpoint, "key": receiver.channel.key})
        sent = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", SENDER, channel],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
        await asyncio.wait_for(arrived.wait(), 60)
        task.cancel()
        forger.close(linger=0)

    try:
        asyncio.run(run())
    finally:
        receiver.close()
    assert sorted(([*m.timings.items()], list(m.rows)) for m in got) == [
        ([("copilot", 0.002)], [[0, 1, 5, 0, 1, 0.5, 0.9, 0, 0, 0]]),
        ([("proxy_tuning", 0.001)], []),
    ]
    assert receiver.refused == 2


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "localhost"])
def test_a_wildcard_or_a_name_is_not_an_address_engines_can_reach(host):
    with pytest.raises(ChannelError, match="report_host"):
        FigureReceiver(host)


def test_the_key_is_new_at_every_start():
    a, b = FigureReceiver(), FigureReceiver()
    try:
        assert a.channel.key != b.channel.key and a.channel.endpoint != b.channel.endpoint
    finally:
        a.close()
        b.close()


ZMQ_THREADS = """
import json, os, sys, threading
from adapters.engine_channel import FigureSender
from adapters.manifest import ReportChannel
os.sched_setaffinity(0, {0})  # an engine thread bound to CPU 0
before = {int(t) for t in os.listdir("/proc/self/task")}
sender = FigureSender(ReportChannel(**json.loads(sys.argv[1])))
started = {int(t) for t in os.listdir("/proc/self/task")} - before
print(json.dumps({
    "own": sorted(os.sched_getaffinity(0)),
    "started": [sorted(os.sched_getaffinity(t)) for t in started],
}))
sender.close()
"""


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity")
    or len(os.sched_getaffinity(0)) < 2
    or 0 not in os.sched_getaffinity(0),
    reason="needs CPU 0 and another CPU to bind threads to",
)
def test_the_senders_io_threads_run_off_the_engine_threads_core():
    """vLLM's CPU engine thread is bound to its cores; ZeroMQ's I/O thread, which would inherit
    that binding, must not take turns with the engine's step on them."""
    receiver = FigureReceiver()
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                ZMQ_THREADS,
                json.dumps({"endpoint": receiver.channel.endpoint, "key": receiver.channel.key}),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        receiver.close()
    result = json.loads(out.stdout)
    assert result["own"] == [0]  # the creating thread's binding is restored
    assert result["started"]  # ZeroMQ's I/O and reaper threads
    for cpus in result["started"]:
        assert cpus and 0 not in cpus
