"""Composition with vLLM's masks, on the pure math: a token the engine set to -inf (grammar,
allowed_token_ids, bad_words, the min_tokens stop mask) stays -inf through every correction,
and a row the corrections exhaust gets its stop token (decoding/pipeline.py)."""

import pytest
import torch

from decoding.copilot.fusion import RectificationFusion
from decoding.correction import parse_correction
from decoding.pipeline import CorrectionPipeline, EngineMask, Row, StepPlugin, keep_engine_masks
from decoding.proxy_tuning import AUX_MODELS_CONTEXT, ProxyTuning
from decoding.unlearning import ForgetFilters, Unlearning
from tests.unit.test_pipeline import REGISTRY
from tests.unit.test_unlearning import CAPITALS, INDEX, VOCAB, encode, gated

INF = torch.inf


def engine_masked(rows: int, vocab: int, allowed: list[list[int]]) -> torch.Tensor:
    """Random logits with every token outside ``allowed[row]`` at -inf, as vLLM hands them."""
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(rows, vocab, dtype=torch.bool)
    for r, tokens in enumerate(allowed):
        mask[r, tokens] = False
    return logits.masked_fill(mask, -INF)


class Reviver(StepPlugin):
    """A hostile extra correction: sets every token to 5, and token 1 to NaN."""

    name = "copilot"  # any name of REGISTRY

    def apply(self, logits, rows):
        logits.fill_(5.0)
        logits[:, 1] = torch.nan
        return logits


class Banner(StepPlugin):
    """Bans every token (as unlearning's bans do when they cover all a grammar allows)."""

    name = "unlearning"

    def apply(self, logits, rows):
        return logits.fill_(-INF)


def spec(*names):
    return parse_correction({n: {} for n in names}, registry=REGISTRY)


# -- the rule ------------------------------------------------------------------------------


def test_the_rule_remasks_engine_tokens_and_nans_and_forces_the_stop_of_exhausted_rows():
    masked = torch.tensor(
        [
            [True, False, False, True],
            [False, True, True, True],
            [True] * 4,
            [False, True, True, True],
        ]
    )
    corrected = torch.tensor(
        [
            [7.0, torch.nan, 2.0, 9.0],  # the engine masked 0 and 3; 1 became NaN
            [-INF, 3.0, 3.0, 3.0],  # the only allowed token banned: exhausted, stop 2
            [1.0, 1.0, 1.0, 1.0],  # the engine masked everything: not the pipeline's case
            [-INF, 1.0, 1.0, 1.0],  # exhausted without a stop token
        ]
    )
    forced = keep_engine_masks(
        corrected, EngineMask(torch.randn(4, 4).masked_fill(masked, -INF)), [0, 2, 0, None]
    )
    assert forced.tolist() == [False, True, False, False]
    assert corrected[0].tolist() == [-INF, -INF, 2.0, -INF]
    assert corrected[1].tolist() == [-INF, -INF, 0.0, -INF]  # only the stop token is left
    assert torch.isneginf(corrected[2]).all() and torch.isneginf(corrected[3]).all()


def _previous_rule(corrected, masked, stops):
    """keep_engine_masks as it was before EngineMask (one full boolean pass per test), the
    reference the cheaper passes must equal."""
    corrected.masked_fill_(masked | torch.isnan(corrected), -INF)
    exhausted = torch.isneginf(corrected).all(dim=-1) & ~masked.all(dim=-1)
    forced = torch.zeros_like(exhausted)
    for i in exhausted.nonzero()[:, 0].tolist():
        if stops[i] is not None and 0 <= stops[i] < corrected.shape[-1]:
            corrected[i, stops[i]] = 0.0
            forced[i] = True
    return forced


@pytest.mark.parametrize("nans", [0.05, 0.002])
@pytest.mark.parametrize("masks", [False, True])
def test_the_rule_equals_the_previous_full_mask_passes(masks, nans):
    """Random batches with NaNs (in most rows, or in a few: only those rows get a NaN pass),
    infinities, exhausted and fully masked rows, with and without any engine mask (the batch
    without one skips the boolean mask): same logits, same forced stops, bit for bit."""
    gen = torch.Generator().manual_seed(18)
    for trial in range(50):
        rows, vocab = 6, 40
        before = torch.randn(rows, vocab, generator=gen)
        if masks:
            before.masked_fill_(torch.rand(rows, vocab, generator=gen) < 0.3, -INF)
            before[trial % rows] = -INF  # a row the engine masked entirely
        corrected = torch.randn(rows, vocab, generator=gen) * 4
        special = torch.rand(rows, vocab, generator=gen)
        corrected[special < nans] = torch.nan
        corrected[(special > 0.05) & (special < 0.1)] = INF
        corrected[(special > 0.1) & (special < 0.3)] = -INF
        corrected[(trial + 1) % rows] = -INF  # exhausted by a plugin
        corrected[(trial + 2) % rows, ::2] = torch.nan
        corrected[(trial + 3) % rows] = torch.nan  # all NaN: exhausted once they are -inf
        stops = [None if r == 3 else (r * 7) % vocab for r in range(rows)]
        mask = EngineMask(before)
        assert (mask.where is not None) == masks
        expected = corrected.clone()
        want = _previous_rule(expected, torch.isneginf(before), stops)
        got = keep_engine_masks(corrected, mask, stops)
        assert torch.equal(got, want)
        assert torch.equal(corrected, expected), trial


def test_no_plugin_revives_an_engine_masked_token_in_the_pipeline():
    allowed = [[3, 4], [0, 1, 2, 5], [6]]
    logits = engine_masked(3, 8, allowed)
    pipeline = CorrectionPipeline({"copilot": Reviver()})
    pipeline.add(0, spec("copilot"), [1], [], stop=7)
    pipeline.add(2, spec("copilot"), [1], [], stop=7)  # row 1 carries no correction
    before = logits.clone()
    out = pipeline.apply(logits)
    for r in (0, 2):
        for v in range(8):
            if v in allowed[r] and v != 1:
                assert out[r, v] == 5.0
            else:  # the engine's mask, or the plugin's NaN
                assert torch.isneginf(out[r, v]), (r, v)
    assert torch.equal(out[1], before[1])  # untouched


@pytest.mark.parametrize("subset", [False, True], ids=["whole-batch", "some-rows"])
def test_an_exhausted_row_gets_its_stop_token_and_is_reported(subset):
    logits = engine_masked(2, 6, [[1, 2], [3]])
    seen: list[list[Row]] = []
    pipeline = CorrectionPipeline({"unlearning": Banner()}, exhausted=seen.append)
    pipeline.add(1, spec("unlearning"), [1], [], stop=5)
    if not subset:
        pipeline.add(0, spec("unlearning"), [1], [], stop=None)
    before = logits[0].clone()
    out = pipeline.apply(logits)
    assert out[1].tolist() == [-INF] * 5 + [0.0]  # 5 was masked by the engine: forced anyway
    if subset:
        assert torch.equal(out[0], before)
    else:  # no stop token: nothing to force, the row stays as the corrections left it
        assert torch.isneginf(out[0]).all()
    assert [[row.stop for row in rows] for rows in seen] == [[5]]


# -- each built-in correction's math on masked logits ---------------------------------------


class InfiniteSource:
    """Auxiliary logits with infinities (a degenerate model), to attack the additive shift."""

    vocab_size = 6

    def __init__(self, sign):
        self.sign = sign

    def step(self, streams):
        out = torch.zeros(len(streams), 6)
        out[:, :3] = self.sign * INF
        return out

    def release(self, uid):
        pass


def test_proxy_tuning_shift_keeps_masks_even_with_infinite_auxiliary_logits():
    context = {AUX_MODELS_CONTEXT: {"expert", "anti"}}
    correction = parse_correction(
        {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": 1.0}},
        context=context,
    )
    plugin = ProxyTuning({"expert": InfiniteSource(1.0), "anti": InfiniteSource(-1.0)})
    pipeline = CorrectionPipeline({"proxy_tuning": plugin})
    pipeline.add(0, correction, [1], [], stop=5)
    logits = engine_masked(1, 6, [[0, 3, 4]])
    out = pipeline.apply(logits.clone())
    # s + (inf - (-inf)) = +inf where allowed (0), -inf + inf = NaN -> -inf where masked (1, 2)
    assert torch.isneginf(out[0, [1, 2, 5]]).all()
    assert out[0, 0] == INF and torch.equal(out[0, 3:5], logits[0, 3:5])


@pytest.mark.parametrize("space", ["logits", "probs"])
def test_copilot_fusion_keeps_masks_in_both_spaces(space):
    scores = engine_masked(2, 6, [[0, 1], [2, 3, 4]])
    rectification = torch.full((2, 6), 3.0)  # pushes every token up, masked ones included
    fused = RectificationFusion(space)(scores, rectification, torch.tensor([1.0, 0.5]))
    assert torch.equal(torch.isneginf(fused), torch.isneginf(scores))


def test_unlearning_penalties_and_bans_keep_masks_and_can_exhaust_a_row():
    filters = ForgetFilters(CAPITALS, encode, embedder=None)
    seen = []
    pipeline = CorrectionPipeline(
        {"unlearning": Unlearning({"capitals": filters})}, exhausted=seen.append
    )
    france = []
    pipeline.add(0, gated([0], soft=False), [9], france, stop=INDEX["<eos>"])
    pipeline.add(1, gated([0], soft=False), [9], [], stop=INDEX["<eos>"])
    vocab = len(VOCAB)
    # Row 0: a grammar allowing " Paris" only, which the forget set bans: exhausted.
    # Row 1: " Paris" or " Lyon": the ban leaves " Lyon".
    logits = engine_masked(2, vocab, [[INDEX[" Paris"]], [INDEX[" Paris"], INDEX[" Lyon"]]])
    out = pipeline.apply(logits)
    assert out[0].argmax() == INDEX["<eos>"] and torch.isfinite(out[0]).sum() == 1
    assert torch.isfinite(out[1]).nonzero()[:, 0].tolist() == [INDEX[" Lyon"]]
    assert [[row.uid for row in rows] for rows in seen] == [[0]]
