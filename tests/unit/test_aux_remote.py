"""An auxiliary model in its own process (decoding/aux/remote.py, worker.py): the same logits as
in this process through joins, leaves, releases and a row whose stream is replaced; its
forward's CPU time spent outside this process (so it overlaps the engine's forward instead of
taking turns with it for the interpreter lock); errors raised, never hung on; the worker gone
once closed; proxy-tuning on the CPU built on workers."""

import time
from types import SimpleNamespace

import pytest
import torch

from adapters.default_model import ensure_default_model
from decoding.aux.remote import RemoteRunner
from decoding.aux.runner import AuxModelRunner
from decoding.pipeline import TokenStream
from decoding.proxy_tuning.correction import CORRECTION

from ..support import make_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_llama(tmp_path_factory.mktemp("remote") / "tiny", ensure_default_model()))


@pytest.fixture(scope="module")
def remote(tiny):
    runner = RemoteRunner(tiny).ready()
    yield runner
    runner.close()


def _streams(rows):
    return {key: TokenStream(tokens[:2], tokens[2:]) for key, tokens in rows.items()}


def test_steps_match_the_runner_in_this_process(tiny, remote):
    local = AuxModelRunner(tiny)
    assert remote.vocab_size == local.vocab_size
    rows = {3: [1, 504, 3458], 0: [1, 2683, 28, 940], 7: list(range(100, 140))}
    for step in range(8):
        if step == 2:
            rows[5] = [1, 253, 1523]  # joins
        if step == 4:
            del rows[0]  # leaves without a release: the step releases it
        if step == 5:
            remote.release(3)
            local.release(3)
            del rows[3]
        if step == 6:
            rows[7] = rows[7][:20]  # preempted and resumed shorter: prefilled anew
        streams = _streams(rows)
        expected = local.step(streams)
        got = remote.step(streams)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        for i, key in enumerate(rows):
            rows[key] = [*rows[key], int(expected[i].argmax())]


def test_the_forward_costs_this_process_almost_no_cpu(tiny, remote):
    local = AuxModelRunner(tiny)
    local.step(_streams({0: [1, 504, 3458]}))  # first-call set-up, not measured
    # Eight joining rows of 512 tokens: two forwards of 2048 tokens, logits for eight rows.
    streams = _streams({100 + k: list(range(100 + k, 612 + k)) for k in range(8)})
    costs = {}
    for name, runner in (("local", local), ("remote", remote)):
        start = time.process_time()  # every thread of this process
        runner.step(streams)
        costs[name] = time.process_time() - start
    # In this process the step costs it the whole forward (ratio 1); measured here with the
    # worker: 0.07-0.10 of it (sending the tokens, receiving the logits).
    assert costs["remote"] < costs["local"] / 3, costs


def test_a_failed_forward_raises_and_the_next_step_resends_whole_streams(tiny):
    runner = RemoteRunner(tiny).ready()
    try:
        with pytest.raises(RuntimeError, match="failed in its worker"):
            runner.step({0: TokenStream([1, 10**9], [])})  # out of the vocabulary
        streams = _streams({0: [1, 504, 3458], 1: [1, 28]})
        torch.testing.assert_close(
            runner.step(streams), AuxModelRunner(tiny).step(streams), rtol=0, atol=1e-5
        )
    finally:
        runner.close()


def test_a_dead_worker_raises_instead_of_hanging(tiny):
    runner = RemoteRunner(tiny).ready()
    runner.process.kill()
    runner.process.wait()
    with pytest.raises(RuntimeError, match="worker process ended"):
        runner.step(_streams({0: [1, 504, 3458]}))
    runner.close()


def test_a_model_that_cannot_load_is_refused_at_ready(tmp_path):
    runner = RemoteRunner(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="missing"):
        runner.ready()
    assert runner.process.poll() is not None  # the worker is gone


def test_closing_ends_the_worker(tiny):
    runner = RemoteRunner(tiny).ready()
    runner.close()
    assert runner.process.returncode == 0


def test_proxy_tuning_on_the_cpu_runs_each_model_in_a_worker(tiny):
    deployment = SimpleNamespace(
        aux_models={n: SimpleNamespace(path=tiny, dtype="float32") for n in ("expert", "anti")}
    )
    setup = SimpleNamespace(deployment=deployment, device=torch.device("cpu"), dtype=torch.float32)
    plugin = CORRECTION.plugin(setup)
    try:
        assert all(isinstance(s, RemoteRunner) for s in plugin.sources.values())
        assert len({s.process.pid for s in plugin.sources.values()}) == 2
    finally:
        for source in plugin.sources.values():
            source.close()
