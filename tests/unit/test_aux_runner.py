"""The batched auxiliary-model runner equals a full forward of each row's stream (teacher
forced), through joins, leaves, ragged lengths, cache growth and split prefills; rows joining
or leaving never move another row's cache."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from adapters.default_model import ensure_default_model
from decoding.aux import runner as runner_module
from decoding.aux.packed import PackedLinear
from decoding.aux.ragged import HEADROOM
from decoding.aux.runner import AuxModelRunner
from decoding.pipeline import TokenStream

from ..support import make_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("aux") / "tiny", ensure_default_model())


@pytest.fixture(scope="module")
def reference(tiny):
    return AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32).eval()


def _expected(reference, streams):
    with torch.no_grad():
        return torch.stack(
            [
                reference(input_ids=torch.tensor([s]), logits_to_keep=1).logits[0, -1]
                for s in streams.values()
            ]
        )


class _Counting:
    """Counts the model's forwards and their packed lengths."""

    def __init__(self, runner):
        self.lengths = []
        original = runner.model.forward

        def forward(*args, **kwargs):
            self.lengths.append(kwargs["input_ids"].shape[1])
            return original(*args, **kwargs)

        runner.model.forward = forward


def test_batched_steps_match_full_forwards(tiny, reference):
    runner = AuxModelRunner(str(tiny))
    forwards = _Counting(runner)
    generator = torch.Generator().manual_seed(0)
    streams = {3: [5, 6, 7, 8, 9], 0: [11, 12], 7: list(range(100, 130))}
    stores = {}
    for step in range(80):  # > the 64-column headroom: row 7's cache grows at least once
        if step == 5:
            streams[9] = list(range(200, 210))  # joins mid-flight, shorter than the others
            streams[4] = list(range(300, 345))  # and another, longer, in the same step
        if step == 8:
            del streams[0]  # leaves
        if step == 12:
            streams[1] = [42]  # a one-token prompt
        if step == 20:
            runner.release(3)  # released by the pipeline, then (as after preemption) re-added
        if step == 30:
            streams[9] = streams[9][:-3]  # its stream no longer matches its cache: prefilled anew
        before = len(forwards.lengths)
        out = runner.step({k: TokenStream(s[:2], s[2:]) for k, s in streams.items()})
        assert len(forwards.lengths) == before + 1  # joining rows prefilled in the same forward
        if step == 5:
            assert forwards.lengths[-1] == 3 + 10 + 45
        torch.testing.assert_close(out, _expected(reference, streams), rtol=1e-4, atol=1e-4)
        # A row's cache tensor stays the same object while others join and leave.
        for key, cache in runner.rows.items():
            if key in stores and stores[key][0] is not cache:
                continue  # the row was prefilled anew
            if key in stores and stores[key][1] == cache.capacity:
                assert cache.store.data_ptr() == stores[key][2]
            stores[key] = (cache, cache.capacity, cache.store.data_ptr())
        for k in streams:
            streams[k] = [*streams[k], int(torch.randint(0, 49000, (1,), generator=generator))]
    assert runner.rows[7].capacity > 30 + HEADROOM  # grew
    # Ragged: each row's cache holds its own length plus headroom, not the longest row's.
    for key, cache in runner.rows.items():
        assert cache.cached == len(streams[key]) - 1
        assert cache.capacity <= cache.cached + HEADROOM


def test_a_large_join_is_split_into_bounded_forwards(tiny, reference, monkeypatch):
    monkeypatch.setattr(runner_module, "PREFILL_TOKENS", 16)
    runner = AuxModelRunner(str(tiny))
    forwards = _Counting(runner)
    streams = {1: list(range(10, 22)), 2: list(range(30, 40)), 5: list(range(50, 90))}
    out = runner.step({k: TokenStream(s, []) for k, s in streams.items()})
    assert forwards.lengths == [12, 10, 40]  # 12 + 10 > 16; a 40-token row runs alone
    torch.testing.assert_close(out, _expected(reference, streams), rtol=1e-4, atol=1e-4)
    for k in streams:
        streams[k].append(7)
    out = runner.step({k: TokenStream(s, []) for k, s in streams.items()})
    assert forwards.lengths[-1] == 3
    torch.testing.assert_close(out, _expected(reference, streams), rtol=1e-4, atol=1e-4)


def test_a_step_whose_stream_has_not_grown_reruns_only_its_last_token(tiny, reference):
    """Chunked prefill: the engine samples (and discards) a token after each chunk of a long
    prompt, so the row reaches the runner several steps with the same stream. Only its first
    step prefills it; the others run its last token again, with the full forward's logits."""
    runner = AuxModelRunner(str(tiny))
    forwards = _Counting(runner)
    streams = {1: list(range(10, 50)), 2: [3, 4, 5]}
    for _ in range(3):  # row 1's prompt in three chunks; row 2 decodes beside it
        out = runner.step({k: TokenStream(s, []) for k, s in streams.items()})
        torch.testing.assert_close(out, _expected(reference, streams), rtol=1e-4, atol=1e-4)
        streams[2].append(7)
    assert forwards.lengths == [40 + 3, 2, 2]
    streams[1].append(8)  # its first real token
    out = runner.step({k: TokenStream(s, []) for k, s in streams.items()})
    assert forwards.lengths[-1] == 2
    torch.testing.assert_close(out, _expected(reference, streams), rtol=1e-4, atol=1e-4)
    assert runner.rows[1].cached == len(streams[1])


def test_bf16_rows_match_a_bf16_full_forward(tiny):
    """In bf16 the runner's ragged attention gives the bf16 full forward's logits (to bf16's
    rounding), for rows of different lengths."""
    runner = AuxModelRunner(str(tiny), dtype=torch.bfloat16)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.bfloat16).eval()
    streams = {1: list(range(10, 60)), 2: [3, 4], 3: list(range(100, 113))}
    for step in range(3):
        out = runner.step({k: TokenStream(s, []) for k, s in streams.items()})
        expected = _expected(reference, streams).float()
        assert (out.argmax(-1) == expected.argmax(-1)).all()
        torch.testing.assert_close(out, expected, rtol=0, atol=0.1 * expected.abs().max().item())
        for k in streams:
            streams[k].append(11 + step)


def test_a_model_whose_layers_bypass_the_attention_interface_is_refused(tiny):
    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32).eval()
    attention = model.model.layers[0].self_attn

    def plain(hidden_states, **kwargs):
        return attention.o_proj(hidden_states * 0 + 0), None

    attention.forward = plain
    with pytest.raises(ValueError, match="1 of its 2 attention layers"):
        AuxModelRunner(str(tiny), model=model)


def test_release_frees_the_rows_cache(tiny):
    runner = AuxModelRunner(str(tiny))
    runner.step({1: TokenStream([1, 2, 3], []), 2: TokenStream([4], [])})
    assert set(runner.rows) == {1, 2}
    runner.release(1)
    assert set(runner.rows) == {2}
    runner.step({})
    assert runner.rows == {}


def test_packed_linear_layers_give_the_same_bf16_logits(tiny, monkeypatch):
    """On the CPU in bf16 the runner packs its linear layers for oneDNN
    (decoding/aux/packed.py); the logits are the unpacked model's, bit for bit."""
    packed = AuxModelRunner(str(tiny), dtype=torch.bfloat16)
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    monkeypatch.setattr(runner_module, "packs", lambda *_: False)
    plain = AuxModelRunner(str(tiny), dtype=torch.bfloat16)
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    streams = {1: list(range(10, 60)), 2: [3, 4], 3: list(range(100, 113))}
    for step in range(3):
        rows = {k: TokenStream(s, []) for k, s in streams.items()}
        assert torch.equal(packed.step(rows), plain.step(rows))
        for k in streams:
            streams[k].append(11 + step)
