"""The ``on_match`` policies' pure logic: strictness, the abstention phrase's state machine, the
plugin forcing it, the floors a request may not go below, the report and the outcome metric."""

import asyncio

import pytest
import torch
from prometheus_client import CollectorRegistry

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.pipeline import CorrectionPipeline
from decoding.registry import DEFAULT
from decoding.unlearning import (
    FORGET_SETS_CONTEXT,
    POLICIES_CONTEXT,
    ForgetFilters,
    ForgetSetPolicy,
    Unlearning,
)
from decoding.unlearning.abstain import Abstention, AbstentionPhrase, force
from decoding.unlearning.admission import Admission, UnlearningGate, policies
from decoding.unlearning.gate import GateDecision
from decoding.unlearning.policy import ON_MATCH, outcome, stricter_or_equal, strictest
from server.config import ForgetSetConfig, LimitsConfig
from server.corrections import take_correction
from server.errors import APIError
from server.metrics import ServerMetrics

from .test_unlearning import CAPITALS, INDEX, VOCAB, encode, gated, ids

# -- strictness and outcomes --------------------------------------------------------------------


def test_policies_are_ordered_by_strictness():
    assert ON_MATCH == ("steer", "abstain", "refuse")
    assert strictest() == "steer" and strictest(None, "abstain", None) == "abstain"
    assert strictest("refuse", "steer") == "refuse" == strictest("abstain", "refuse")
    assert stricter_or_equal("refuse", "abstain") and stricter_or_equal("steer", "steer")
    assert not stricter_or_equal("steer", "abstain")


def test_outcomes():
    assert outcome(False, "refuse", 0) == "passed"
    assert outcome(True, "refuse", 0) == "refused"
    assert outcome(True, "abstain", 2) == "abstained"
    assert outcome(True, "abstain", 0) == "steered"  # nothing was ever blocked
    assert outcome(True, "steer", 0) == "steered"


# -- the abstention phrase ------------------------------------------------------------------------


def test_the_phrase_opens_bare_after_whitespace_and_after_a_space_elsewhere():
    phrase = AbstentionPhrase.encode("  the city ", encode, frozenset({INDEX[" "]}))
    assert phrase.opening == tuple(encode(["the city"])[0])
    assert phrase.inline == tuple(ids(" the", " city"))
    assert phrase.after(INDEX[" "]) == phrase.opening
    assert phrase.after(INDEX[" is"]) == phrase.inline
    with pytest.raises(ValueError, match="empty"):
        AbstentionPhrase.encode("   ", encode)


def test_abstention_forces_the_phrase_from_the_first_blocked_step_once():
    phrase = AbstentionPhrase(opening=(1, 2), inline=(7, 8, 9), bare_after=frozenset({0}))
    row = Abstention(phrase)
    out = [5]
    assert row.next_token(out, blocked=False, last=5) is None
    assert row.next_token(out, blocked=True, last=5) == 7 and row.began_at(1)
    # The same position seen again (a discarded prefill step): decided afresh.
    assert row.next_token(out, blocked=False, last=5) is None and row.start is None
    assert row.next_token(out, blocked=True, last=5) == 7
    out.append(7)
    assert row.next_token(out, blocked=False, last=7) == 8 and not row.began_at(2)
    out.append(8)
    assert row.next_token(out, blocked=True, last=8) == 9
    out.append(9)
    assert row.next_token(out, blocked=True, last=9) is None  # done: free, never again
    assert row.next_token([*out, 3], blocked=True, last=3) is None


def test_abstention_opens_bare_and_stops_when_the_output_departs():
    phrase = AbstentionPhrase(opening=(1, 2), inline=(7, 8), bare_after=frozenset({0}))
    row = Abstention(phrase)
    assert row.next_token([], blocked=True, last=0) == 1  # after the template's newline
    assert row.next_token([4], blocked=False, last=4) is None and row.done  # not forced token
    row = Abstention(phrase)
    assert row.next_token([], blocked=True, last=5) == 7  # a prefilled reply: after a space
    row.abandon(0)
    assert row.next_token([7], blocked=True, last=7) is None


def test_a_phrase_given_up_on_a_discarded_step_is_decided_afresh():
    phrase = AbstentionPhrase(opening=(1, 2), inline=(7, 8), bare_after=frozenset({0}))
    row = Abstention(phrase)
    assert row.next_token([], blocked=True, last=0) == 1
    row.abandon(0)  # a partial prefill's step, whose token vLLM throws away
    assert row.next_token([], blocked=True, last=0) == 1  # the real step at the same position


@pytest.mark.parametrize(
    ("output", "done", "due"),
    [
        ([5, 1, 2, 6], True, None),  # the whole phrase already said: never again
        ([5, 6, 7], False, 8),  # preempted mid-phrase (inline): the rest is forced
        ([5, 6], False, None),  # nothing of it yet: decided as usual
    ],
)
def test_a_preempted_row_resumes_from_its_output(output, done, due):
    phrase = AbstentionPhrase(opening=(1, 2), inline=(7, 8), bare_after=frozenset({0}))
    row = Abstention(phrase)
    row.resume(output)
    assert row.done is done
    assert row.next_token(output, blocked=False, last=output[-1]) == due


def test_force_leaves_one_candidate_and_keeps_the_bans():
    logits = torch.randn(6)
    logits[2] = -torch.inf
    force(logits, 4)
    for temperature in (0.1, 1.0, 100.0):
        probs = torch.softmax(logits / temperature, dim=-1)
        assert probs[4] == 1.0 and probs.sum() == 1.0
    assert torch.isneginf(logits[2]) and torch.isfinite(logits[[0, 1, 3, 5]]).all()


def forced(row: torch.Tensor) -> bool:
    """Whether one candidate holds all the probability."""
    return bool(torch.softmax(row, dim=-1).max() == 1.0)


def test_the_plugin_forces_the_phrase_where_the_top_token_is_blocked():
    phrase = AbstentionPhrase.encode("the city", encode, frozenset({INDEX[" "]}))
    filters = ForgetFilters(CAPITALS, encode, embedder=None, abstention=phrase)
    seen = []
    plugin = Unlearning({"capitals": filters}, observe=lambda *step: seen.append(step))
    pipeline = CorrectionPipeline({"unlearning": plugin})
    abstaining, steered, passed = [INDEX[" is"]], [INDEX[" is"]], []
    pipeline.add(0, gated([0], soft=False, on_match="abstain"), [9], abstaining)
    pipeline.add(1, gated([0], soft=False), [9], steered)
    pipeline.add(2, gated([], soft=False, on_match="abstain"), [9], passed)

    def step(top: str):
        logits = torch.zeros(3, len(VOCAB))
        logits[:, INDEX[top]] = 5.0
        return pipeline.apply(logits)

    out = step(" Paris")  # the most likely token is banned
    assert out[0].argmax() == INDEX[" the"] and forced(out[0])
    assert torch.isneginf(out[1, INDEX[" Paris"]]) and not forced(out[1])
    assert out[2, INDEX[" Paris"]] == 5.0  # the gate stayed closed: untouched
    rows, blocked, _, abstained = seen[-1]
    assert [r.uid for r in rows] == [0, 1] and blocked.tolist() == [True, True]
    assert abstained.tolist() == [True, False]

    abstaining.append(INDEX[" the"])
    out = step(" Lyon")
    assert out[0].argmax() == INDEX[" city"] and forced(out[0])
    assert seen[-1][3].tolist() == [False, False]  # an abstention is counted where it began
    abstaining.append(INDEX[" city"])
    out = step(" Paris")  # blocked again: the row decodes freely, the blocks still hold
    assert torch.isneginf(out[0, INDEX[" Paris"]]) and not forced(out[0])
    assert seen[-1][3].tolist() == [False, False]


def test_a_blocked_phrase_token_is_not_forced():
    # An operator phrase spelling the forbidden word ("Par" + "is"): the filters win, and the
    # row is steered from the blocked token on.
    phrase = AbstentionPhrase.encode("Paris", encode, frozenset({9}))
    assert phrase.opening == tuple(ids("Par", "is"))
    filters = ForgetFilters(CAPITALS, encode, embedder=None, abstention=phrase)
    pipeline = CorrectionPipeline({"unlearning": Unlearning({"capitals": filters})})
    output = []
    pipeline.add(0, gated([0], soft=False, on_match="abstain"), [9], output)
    logits = torch.zeros(1, len(VOCAB))
    logits[0, INDEX[" Paris"]] = 5.0
    out = pipeline.apply(logits.clone())
    assert out[0].argmax() == INDEX["Par"] and forced(out[0])
    output.append(INDEX["Par"])
    out = pipeline.apply(logits.clone())
    assert torch.isneginf(out[0, INDEX["is"]]) and not forced(out[0])


# -- floors: the set's and the profile's ----------------------------------------------------------

SET_FLOOR = {
    FORGET_SETS_CONTEXT: {"capitals": 2},
    POLICIES_CONTEXT: {"capitals": ForgetSetPolicy(on_match="abstain", public_name=True)},
}


def test_a_request_may_only_make_the_set_s_policy_stricter():
    ok = parse_correction(
        {"unlearning": {"forget_set": "capitals", "on_match": "refuse"}}, context=SET_FLOOR
    )
    assert ok.steps["unlearning"].on_match == "refuse"
    unset = parse_correction({"unlearning": {"forget_set": "capitals"}}, context=SET_FLOOR)
    assert unset.steps["unlearning"].on_match is None  # the set's applies (the gate)
    for weaker in ("steer", "nope", 3):
        with pytest.raises(CorrectionError) as err:
            parse_correction(
                {"unlearning": {"forget_set": "capitals", "on_match": weaker}}, context=SET_FLOOR
            )
        assert err.value.param == "correction.unlearning.on_match"


PROFILE = {"unlearning": {"forget_set": "capitals", "on_match": "abstain"}}


def _take(correction, enforced=frozenset()):
    body = {"correction": correction} if correction is not None else {}
    return take_correction(body, DEFAULT, SET_FLOOR, PROFILE, enforced)


@pytest.mark.parametrize("enforced", [frozenset(), frozenset({"unlearning"})])
def test_a_request_may_only_make_the_profile_s_policy_stricter(enforced):
    spec = _take({"unlearning": {"on_match": "refuse"}}, enforced)
    params = spec.steps["unlearning"]
    assert params.on_match == "refuse" and params.forget_set == "capitals"
    assert _take(None, enforced).steps["unlearning"].on_match == "abstain"
    with pytest.raises(APIError) as err:
        _take({"unlearning": {"on_match": "steer"}}, enforced)
    assert err.value.status == 400 and err.value.param == "correction.unlearning.on_match"
    assert "'abstain' stricter" in err.value.message
    with pytest.raises(APIError) as err:  # null would replace the profile's when merged
        _take({"unlearning": {"on_match": None}}, enforced)
    assert err.value.status == 400 and err.value.param == "correction.unlearning.on_match"


def test_only_the_operator_may_choose_abstain_for_a_set_without_report_detail():
    private = ForgetSetPolicy(on_match="steer")  # report_detail off: the counts are private
    context = {FORGET_SETS_CONTEXT: {"vault": 2}, POLICIES_CONTEXT: {"vault": private}}
    with pytest.raises(CorrectionError, match="'refuse' is allowed") as err:
        parse_correction(
            {"unlearning": {"forget_set": "vault", "on_match": "abstain"}}, context=context
        )
    assert err.value.param == "correction.unlearning.on_match"
    refuse = {"unlearning": {"forget_set": "vault", "on_match": "refuse"}}
    assert parse_correction(refuse, context=context).steps["unlearning"].on_match == "refuse"
    chosen = {"vault": ForgetSetPolicy(on_match="abstain")}  # the operator's own choice
    context = {FORGET_SETS_CONTEXT: {"vault": 2}, POLICIES_CONTEXT: chosen}
    asked = {"unlearning": {"forget_set": "vault", "on_match": "abstain"}}
    assert parse_correction(asked, context=context).steps["unlearning"].on_match == "abstain"


def test_an_enforced_correction_still_admits_nothing_but_a_stricter_policy():
    enforced = frozenset({"unlearning"})
    for correction in (
        {"unlearning": {"on_match": "refuse", "forget_set": "capitals"}},
        {"unlearning": {"on_match": "refuse", "threshold": 0.9}},
        {"unlearning": {"on_match": "bogus"}},
        {"unlearning": None},
    ):
        with pytest.raises(APIError) as err:
            _take(correction, enforced)
        assert err.value.code == "correction_enforced", correction


# -- the gate's policy, report and metric ---------------------------------------------------------


class _Embedder:
    def encode(self, texts):
        return torch.nn.functional.normalize(torch.ones(len(texts), 4), dim=-1)


def _outcomes(registry):
    return {
        (s.labels["forget_set"], s.labels["outcome"]): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "corrigo_unlearning_outcomes_total"
    }


def test_the_gate_applies_the_strictest_policy_and_reports_its_outcome():
    config = {
        "capitals": ForgetSetConfig(path="x", on_match="abstain", refusal="No.", public_name=True),
        "vault": ForgetSetConfig(path="y"),
    }
    known = policies(config)
    assert known["capitals"].on_match == "abstain" and known["capitals"].refusal == "No."
    assert known["vault"].on_match == "steer"
    registry = CollectorRegistry()
    sets = {"capitals": CAPITALS, "vault": CAPITALS}
    gate = UnlearningGate(sets, _Embedder(), ServerMetrics(registry), known, LimitsConfig())
    context = {FORGET_SETS_CONTEXT: {"capitals": 2, "vault": 2}, POLICIES_CONTEXT: known}

    def admit(params):
        spec = parse_correction({"unlearning": params}, context=context)
        params = spec.steps["unlearning"]
        job = gate.prepare(params, {"prompt": "What is the capital of France?"})
        admitted = asyncio.run(gate.admit(params, job))
        return admitted, admitted.state

    admitted, admission = admit({"forget_set": "capitals"})
    assert admission.on_match == "abstain" and not admission.refused
    assert admitted.answer is None
    assert admitted.params.on_match == "abstain"  # what the engine is told
    report = gate.report(admitted, {"abstentions": 1.0, "steps": 3.0})
    assert report["on_match"] == "abstain" and report["outcome"] == "abstained"
    assert report["abstentions"] == 1

    admitted, admission = admit({"forget_set": "capitals", "on_match": "refuse"})
    assert admission.refused and admitted.answer == "No."
    assert gate.report(admitted, None)["outcome"] == "refused"

    # A private set under steer reports the decision only, as before the policies.
    admitted, _ = admit({"forget_set": "vault"})
    assert gate.report(admitted, {}) == {"gate": {"decision": "filter"}}
    refused, _ = admit({"forget_set": "vault", "on_match": "refuse"})
    assert gate.report(refused, {}) == {
        "gate": {"decision": "filter"},
        "on_match": "refuse",
        "outcome": "refused",
        "abstentions": 0,
    }
    assert _outcomes(registry) == {
        ("capitals", "abstained"): 1.0,
        ("capitals", "refused"): 1.0,
        ("undisclosed", "steered"): 1.0,  # a private set's name is never a label
        ("undisclosed", "refused"): 1.0,
    }


def test_a_closed_gate_never_refuses():
    admission = Admission(
        parse_correction(
            {"unlearning": {"forget_set": "capitals"}},
            context={FORGET_SETS_CONTEXT: {"capitals": 2}},
        ).steps["unlearning"],
        GateDecision(0.1, ()),
        "refuse",
    )
    assert not admission.refused


def test_the_policy_and_its_texts_are_configured_per_set(tmp_path):
    from pydantic import ValidationError

    from server.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(
        '[forget_sets.capitals]\npath = "f.jsonl"\non_match = "refuse"\n'
        'refusal = "Withheld."\nabstention = "I can\'t say."\n'
    )
    config = load_config(path, environ={}).forget_sets["capitals"]
    assert (config.on_match, config.refusal, config.abstention) == (
        "refuse",
        "Withheld.",
        "I can't say.",
    )
    for bad in ({"on_match": "lenient"}, {"refusal": "  "}, {"abstention": ""}):
        with pytest.raises(ValidationError):
            ForgetSetConfig(path="f.jsonl", **bad)


def test_the_eval_s_judge_threshold_maximises_balanced_accuracy():
    from evals.unlearning import calibrate

    best = calibrate(negatives=[0.1, 0.2, 0.6], positives=[0.5, 0.7, 0.9])
    assert best["threshold"] == 0.7 and best["tpr"] == pytest.approx(2 / 3)
    assert best["fpr"] == 0.0 and best["balanced_accuracy"] == pytest.approx(5 / 6)
    useless = calibrate(negatives=[0.4, 0.4], positives=[0.4])
    assert useless["balanced_accuracy"] == 0.5 and useless["threshold"] > 1  # flags nothing
