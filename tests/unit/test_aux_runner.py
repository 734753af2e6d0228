"""The batched auxiliary-model runner equals stepping each row alone, through joins, leaves,
ragged lengths and capacity growth."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from adapters.default_model import ensure_default_model
from decoding.aux.runner import AuxModelRunner
from decoding.pipeline import TokenStream

from ..support import make_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("aux") / "tiny", ensure_default_model())


def test_batched_steps_match_single_row_forwards(tiny):
    runner = AuxModelRunner(str(tiny))
    reference = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    streams = {3: [5, 6, 7, 8, 9], 0: [11, 12], 7: list(range(100, 130))}
    for step in range(80):  # > the 64-column headroom: capacity grows at least once
        if step == 5:
            streams[9] = list(range(200, 210))  # joins mid-flight, shorter than the others
        if step == 8:
            del streams[0]  # leaves
        if step == 12:
            streams[1] = [42]  # a one-token prompt: nothing to prefill
        if step == 20:
            runner.release(3)  # released by the pipeline, then (as after preemption) re-added
        out = runner.step({k: TokenStream(s[:2], s[2:]) for k, s in streams.items()})
        with torch.no_grad():
            expected = torch.stack(
                [reference(input_ids=torch.tensor([s])).logits[0, -1] for s in streams.values()]
            )
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        for k in streams:
            streams[k] = [*streams[k], int(torch.randint(0, 49000, (1,), generator=generator))]
    assert runner.capacity > 64


def test_last_release_frees_the_cache(tiny):
    runner = AuxModelRunner(str(tiny))
    runner.step({1: TokenStream([1, 2, 3], [])})
    assert runner.cache is not None
    runner.release(1)
    assert runner.cache is None and runner.rows == {}
