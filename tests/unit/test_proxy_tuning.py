"""Proxy-tuning: request validation and the exact formula, on fake auxiliary models."""

import math

import pytest
import torch

from decoding.aux.streams import ThreadOverlap
from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.pipeline import Row, TokenStream
from decoding.proxy_tuning import AUX_MODELS_CONTEXT, ProxyTuning

CONTEXT = {AUX_MODELS_CONTEXT: {"expert", "anti", "expert2", "anti2"}}


def spec(**params):
    return parse_correction({"proxy_tuning": params}, context=CONTEXT)


class FakeSource:
    """Logits that depend on the stream only: ``table[last token]``, with extra vocab rows."""

    def __init__(self, seed, vocab=10):
        self.table = torch.randn(50, vocab, generator=torch.Generator().manual_seed(seed))
        self.vocab_size = vocab
        self.released = []
        self.calls = 0

    def step(self, streams):
        self.calls += 1
        return torch.stack([self.table[s.last] for s in streams.values()])

    def release(self, uid):
        self.released.append(uid)


def row(uid, last, correction):
    return Row(uid, correction, TokenStream([1, 2], [last]))


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"expert": "nope", "anti_expert": "anti"}, "correction.proxy_tuning.expert"),
        ({"expert": "expert"}, "correction.proxy_tuning"),
        (
            {"expert": "expert", "anti_expert": "anti", "alpha": "strong"},
            "correction.proxy_tuning.alpha",
        ),
        (
            {"expert": "expert", "anti_expert": "anti", "alpha": math.nan},
            "correction.proxy_tuning.alpha",
        ),
        (
            {
                "expert": "expert",
                "anti_expert": "anti",
                "pairs": [{"expert": "expert", "anti_expert": "anti"}],
            },
            "correction.proxy_tuning",
        ),
        ({"pairs": []}, "correction.proxy_tuning.pairs"),
        (
            {"pairs": [{"expert": "expert", "anti_expert": "x"}]},
            "correction.proxy_tuning.pairs.0.anti_expert",
        ),
        ({"expert": "expert", "anti_expert": "anti", "beta": 1}, "correction.proxy_tuning.beta"),
    ],
)
def test_bad_specs_name_the_field(params, param):
    with pytest.raises(CorrectionError) as err:
        spec(**params)
    assert err.value.param == param


def test_unknown_model_message_lists_declared_models():
    with pytest.raises(
        CorrectionError, match="unknown auxiliary model 'nope'.*anti, anti2, expert, expert2"
    ):
        spec(expert="nope", anti_expert="anti")


def test_coefficients():
    assert spec(expert="expert", anti_expert="anti", alpha=0.5).steps[
        "proxy_tuning"
    ].coefficients == {
        "expert": 0.5,
        "anti": -0.5,
    }
    pairs = spec(
        pairs=[
            {"expert": "expert", "anti_expert": "anti", "weight": 2.0},
            {"expert": "expert2", "anti_expert": "anti", "weight": 1.0},
        ],
        alpha=0.5,
    ).steps["proxy_tuning"]
    assert pairs.coefficients == {"expert": 1.0, "anti": -1.5, "expert2": 0.5}
    same = spec(expert="expert", anti_expert="expert", alpha=3.0).steps["proxy_tuning"]
    assert same.coefficients == {"expert": 0.0}


def test_apply_is_the_formula_with_vocab_truncation():
    sources = {
        name: FakeSource(seed, vocab=10)
        for seed, name in enumerate(["expert", "anti", "expert2", "anti2"])
    }
    plugin = ProxyTuning(sources)
    base = torch.randn(3, 8)  # the base has 8 tokens; the auxiliaries 10 (truncated)
    rows = [
        row(0, 5, spec(expert="expert", anti_expert="anti", alpha=0.7)),
        row(
            1,
            6,
            spec(
                pairs=[
                    {"expert": "expert2", "anti_expert": "anti2", "weight": 2.0},
                    {"expert": "expert", "anti_expert": "anti", "weight": -1.0},
                ]
            ),
        ),
        row(2, 7, spec(expert="expert", anti_expert="expert", alpha=5.0)),
    ]
    out = plugin.apply(base.clone(), rows)
    t = {name: s.table for name, s in sources.items()}
    expected = base.clone()
    expected[0] += 0.7 * (t["expert"][5] - t["anti"][5])[:8]
    expected[1] += (
        2.0 * (t["expert2"][6] - t["anti2"][6]) - 1.0 * (t["expert"][6] - t["anti"][6])
    )[:8]
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[2], base[2])  # expert == anti-expert: exactly unchanged
    assert all(s.calls == 1 for s in sources.values())  # one batched step per model

    plugin.release(1)
    assert all(s.released == [1] for s in sources.values())


def test_alpha_zero_is_exactly_plain():
    sources = {"expert": FakeSource(1), "anti": FakeSource(2)}
    base = torch.randn(1, 10)
    out = ProxyTuning(sources).apply(
        base.clone(), [row(0, 3, spec(expert="expert", anti_expert="anti", alpha=0))]
    )
    assert torch.equal(out, base)


def test_pairs_form_validates_with_context():
    params = spec(pairs=[{"expert": "expert", "anti_expert": "anti"}]).steps["proxy_tuning"]
    assert params.expert is None and params.coefficients == {"expert": 1.0, "anti": -1.0}


def test_forwards_started_ahead_give_the_same_logits():
    """prepare() starts each model's forward on its lane; apply() uses it, once."""
    sources = {"expert": FakeSource(1), "anti": FakeSource(2)}
    rows = [
        row(0, 5, spec(expert="expert", anti_expert="anti", alpha=0.5)),
        row(1, 9, spec(expert="expert", anti_expert="anti")),
    ]
    base = torch.randn(2, 10)
    expected = ProxyTuning(sources).apply(base.clone(), rows)
    plugin = ProxyTuning(sources, ThreadOverlap())
    plugin.prepare(rows)
    out = plugin.apply(base.clone(), rows)
    assert torch.equal(out, expected)
    assert all(s.calls == 2 for s in sources.values())  # once per plugin, not twice


def test_a_stream_that_moved_on_after_prepare_is_stepped_afresh():
    sources = {"expert": FakeSource(1), "anti": FakeSource(2)}
    output = [5]
    live = Row(0, spec(expert="expert", anti_expert="anti"), TokenStream([1, 2], output))
    plugin = ProxyTuning(sources, ThreadOverlap())
    plugin.prepare([live])
    output.append(7)  # the engine appended a token the forward ahead did not see
    out = plugin.apply(torch.zeros(1, 10), [live])
    t = {name: s.table for name, s in sources.items()}
    torch.testing.assert_close(out[0], t["expert"][7] - t["anti"][7])
    # A step that never came: the forward ahead is waited for before the row is released.
    plugin.prepare([live])
    plugin.release(0)
    assert plugin._ahead == {} and all(s.released == [0] for s in sources.values())
