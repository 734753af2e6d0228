"""Lanes for auxiliary forwards (decoding/aux/overlap.py, decoding/aux/streams.py): order within a
lane, overlap across lanes, errors taken with the result, the device choosing the kind, and
proxy-tuning on real auxiliary models giving the same logits on threads as inline. The CUDA
streams are checked by bench/aux_streams_check.py on a CUDA host."""

import threading

import pytest
import torch

from adapters.default_model import ensure_default_model
from decoding.aux.overlap import Inline
from decoding.aux.remote import RemoteRunner
from decoding.aux.runner import AuxModelRunner
from decoding.aux.streams import StreamOverlap, ThreadOverlap, overlap_for
from decoding.correction import parse_correction
from decoding.pipeline import Row, TokenStream
from decoding.proxy_tuning import AUX_MODELS_CONTEXT, ProxyTuning

from ..support import make_tiny_llama


def test_one_lane_runs_in_order_and_two_lanes_overlap():
    lanes = ThreadOverlap()
    a_may_finish, ran = threading.Event(), []

    def first():
        # Finishes only once lane b has run: lanes that did not overlap would time out.
        assert a_may_finish.wait(10)
        ran.append("a1")
        return torch.zeros(1)

    def second():
        ran.append("a2")
        return torch.ones(1)

    def other():
        a_may_finish.set()
        ran.append("b")
        return torch.full((1,), 2.0)

    pending = [lanes.submit("a", first), lanes.submit("a", second), lanes.submit("b", other)]
    assert [float(p.result()) for p in pending] == [0.0, 1.0, 2.0]
    assert ran.index("b") < ran.index("a1") < ran.index("a2")


@pytest.mark.parametrize("lanes", [Inline(), ThreadOverlap()], ids=["inline", "threads"])
def test_errors_come_with_the_result_and_wait_never_raises(lanes):
    def broken():
        raise RuntimeError("out of memory")

    pending = lanes.submit("a", broken)
    pending.wait()
    with pytest.raises(RuntimeError, match="out of memory"):
        pending.result()
    assert float(lanes.submit("a", torch.ones, 1).result()) == 1.0  # the lane goes on


def test_the_device_chooses_the_lanes():
    assert isinstance(overlap_for(torch.device("cpu")), ThreadOverlap)
    # Streams are made at a lane's first forward, so choosing them needs no GPU.
    assert isinstance(overlap_for(torch.device("cuda", 0)), StreamOverlap)
    assert isinstance(overlap_for(torch.device("meta")), Inline)


def test_proxy_tuning_on_real_models_is_the_same_on_threads_as_inline(tmp_path):
    """One code path above the device detail: the same steps, joins and leaves, the same
    logits, whether the forwards run inline or on their lanes ahead of apply()."""
    tokenizer = ensure_default_model()
    paths = {
        name: str(make_tiny_llama(tmp_path / name, tokenizer, seed=seed))
        for seed, name in enumerate(["expert", "anti"])
    }
    context = {AUX_MODELS_CONTEXT: set(paths)}
    correction = parse_correction(
        {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": 0.5}},
        context=context,
    )
    plugins = {
        kind: ProxyTuning({n: AuxModelRunner(p) for n, p in paths.items()}, lanes)
        for kind, lanes in (("inline", Inline()), ("threads", ThreadOverlap()))
    }
    # As on the CPU in the engine (decoding/proxy_tuning/correction.py): a worker per model.
    workers = {n: RemoteRunner(p) for n, p in paths.items()}
    plugins["workers"] = ProxyTuning({n: w.ready() for n, w in workers.items()}, ThreadOverlap())
    streams = {0: [1, 504, 3458], 1: [1, 2683, 28, 940], 2: [1, 11234]}
    generator = torch.Generator().manual_seed(0)
    for step in range(6):
        if step == 2:
            streams[3] = [1, 253, 1523]  # joins
        if step == 4:
            del streams[0]  # leaves
            for plugin in plugins.values():
                plugin.release(0)
        rows = [Row(uid, correction, TokenStream(s[:2], s[2:])) for uid, s in streams.items()]
        base = torch.randn(len(rows), 49152, generator=generator)
        out = {}
        for kind, plugin in plugins.items():
            plugin.prepare(rows)
            out[kind] = plugin.apply(base.clone(), rows)
        assert torch.equal(out["inline"], out["threads"])
        torch.testing.assert_close(out["workers"], out["inline"], rtol=0, atol=1e-5)
        assert not torch.equal(out["inline"], base)
        for uid in streams:
            streams[uid].append(int(out["inline"][list(streams).index(uid)].argmax()))
    for worker in workers.values():
        worker.close()
