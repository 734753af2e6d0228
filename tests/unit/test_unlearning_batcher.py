"""The gate's micro-batcher (decoding/unlearning/batcher.py): concurrent requests' pieces in one
forward, each request given exactly its own rows, errors and cancellations kept to their
request, nothing on the event loop; and the gate deciding through it as it decides alone."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from prometheus_client import CollectorRegistry

from decoding.unlearning.admission import UnlearningGate
from decoding.unlearning.batcher import EncodeBatcher
from decoding.unlearning.classifier import PairClassifier, TrainedGate
from decoding.unlearning.forget_set import ForgetEntry, ForgetSet
from decoding.unlearning.gate import ForgetGate, chunks
from decoding.unlearning.params import UnlearningParams
from decoding.unlearning.piece_cache import PieceCache
from server.config import LimitsConfig
from server.metrics import ServerMetrics

DIM = 16


def vector(text: str) -> torch.Tensor:
    """A unit vector determined by the text alone (character counts by code point mod DIM)."""
    v = torch.zeros(DIM)
    for char in text:
        v[ord(char) % DIM] += 1.0
    return torch.nn.functional.normalize(v + 1e-3, dim=0)


class Recording:
    """An embedder that records each encode's texts; ``hold`` blocks the first encode until
    released (so that the requests arriving meanwhile queue up), ``poison`` fails any encode
    that holds it."""

    def __init__(self, hold: bool = False, poison: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.poison = poison

    def encode(self, texts):
        self.calls.append(list(texts))
        self.started.set()
        self.release.wait(10)
        if self.poison is not None and self.poison in texts:
            raise ValueError("the encoder cannot read this")
        return torch.stack([vector(t) for t in texts])


def identity(rows: torch.Tensor) -> torch.Tensor:
    return rows


async def _wait_started(embedder: Recording) -> None:
    while not embedder.started.is_set():
        await asyncio.sleep(0.001)


def _batcher(embedder, **kwargs) -> EncodeBatcher:
    return EncodeBatcher(embedder, ThreadPoolExecutor(max_workers=1), **kwargs)


REQUESTS = [
    ("You are a helpful assistant.", "What is the capital of France?"),
    ("You are a helpful assistant.", "Tell me about Paris."),
    ("Write a poem.",),
    ("What is the capital of France?", "Write a poem.", "Tell me about Paris."),
    (),
    ("a", "b", "a"),
]


def test_each_request_gets_exactly_its_own_rows_in_its_own_order_from_one_batch():
    embedder = Recording(hold=True)
    batcher = _batcher(embedder)

    async def main():
        first = asyncio.create_task(batcher.run(("warm",), identity))
        await _wait_started(embedder)  # the others queue while the first forward runs
        rest = [asyncio.create_task(batcher.run(r, identity)) for r in REQUESTS]
        await asyncio.sleep(0.01)
        embedder.release.set()
        return await first, await asyncio.gather(*rest)

    _, results = asyncio.run(main())
    for pieces, rows in zip(REQUESTS, results, strict=True):
        if not pieces:  # no rows: the gate's decision for no text is closed
            assert len(rows) == 0
            continue
        assert torch.equal(rows, torch.stack([vector(p) for p in pieces])), pieces
    # Two forwards: the first request alone, then everyone who queued meanwhile, each
    # distinct piece once.
    assert len(embedder.calls) == 2 and batcher.batches == 2
    union = list(dict.fromkeys(p for r in REQUESTS for p in r))
    assert embedder.calls[1] == union


def test_a_batch_holds_at_most_batch_pieces_but_a_larger_request_still_runs_alone():
    embedder = Recording(hold=True)
    batcher = _batcher(embedder, batch_pieces=4)
    big = tuple(f"piece {i}" for i in range(7))
    small = [(f"x{i}", f"y{i}") for i in range(4)]

    async def main():
        first = asyncio.create_task(batcher.run(("warm",), identity))
        await _wait_started(embedder)
        tasks = [asyncio.create_task(batcher.run(r, identity)) for r in (big, *small)]
        await asyncio.sleep(0.01)
        embedder.release.set()
        await first
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert [len(r) for r in results] == [7, 2, 2, 2, 2]
    sizes = [len(c) for c in embedder.calls[1:]]
    assert sizes == [7, 4, 4]  # arrival order kept: the big one alone, then pairs of two


def test_an_error_in_one_members_decision_fails_that_request_only():
    embedder = Recording(hold=True)
    batcher = _batcher(embedder)

    def broken(rows):
        raise RuntimeError("this request's decision failed")

    async def main():
        first = asyncio.create_task(batcher.run(("warm",), identity))
        await _wait_started(embedder)
        good = asyncio.create_task(batcher.run(("alpha",), identity))
        bad = asyncio.create_task(batcher.run(("beta",), broken))
        other = asyncio.create_task(batcher.run(("gamma",), identity))
        await asyncio.sleep(0.01)
        embedder.release.set()
        await first
        return await asyncio.gather(good, bad, other, return_exceptions=True)

    good, bad, other = asyncio.run(main())
    assert torch.equal(good, vector("alpha")[None])
    assert isinstance(bad, RuntimeError) and "decision failed" in str(bad)
    assert torch.equal(other, vector("gamma")[None])
    assert len(embedder.calls) == 2  # the failure was the member's, not the forward's


def test_a_text_that_breaks_the_encoder_fails_its_request_only_never_passes():
    embedder = Recording(hold=True, poison="hostile")
    batcher = _batcher(embedder)

    async def main():
        first = asyncio.create_task(batcher.run(("warm",), identity))
        await _wait_started(embedder)
        tasks = [
            asyncio.create_task(batcher.run(r, identity))
            for r in (("alpha",), ("hostile", "beta"), ("gamma",))
        ]
        await asyncio.sleep(0.01)
        embedder.release.set()
        await first
        return await asyncio.gather(*tasks, return_exceptions=True)

    alpha, hostile, gamma = asyncio.run(main())
    assert isinstance(hostile, ValueError)  # fails closed: an error, not a result
    assert torch.equal(alpha, vector("alpha")[None])
    assert torch.equal(gamma, vector("gamma")[None])
    # The batch's forward failed, then each member was encoded alone.
    assert embedder.calls[1:] == [
        ["alpha", "hostile", "beta", "gamma"],
        ["alpha"],
        ["hostile", "beta"],
        ["gamma"],
    ]

    # Alone, the failing request gets the encoder's error too.
    lone = _batcher(Recording(poison="hostile"))
    with pytest.raises(ValueError):
        asyncio.run(lone.run(("hostile",), identity))


def test_cancelled_requests_leave_the_batch_and_do_not_disturb_the_others():
    embedder = Recording(hold=True)
    batcher = _batcher(embedder)

    async def main():
        first = asyncio.create_task(batcher.run(("warm",), identity))
        await _wait_started(embedder)
        gone = asyncio.create_task(batcher.run(("left while waiting",), identity))
        kept = asyncio.create_task(batcher.run(("kept",), identity))
        await asyncio.sleep(0.005)
        gone.cancel()
        await asyncio.sleep(0.005)
        embedder.release.set()
        first.cancel()  # cancelled during its forward: its result is dropped
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(asyncio.CancelledError):
            await gone
        result = await kept
        # The batcher still serves later requests.
        later = await batcher.run(("later",), identity)
        return result, later

    kept, later = asyncio.run(main())
    assert torch.equal(kept, vector("kept")[None])
    assert torch.equal(later, vector("later")[None])
    assert ["left while waiting"] not in embedder.calls
    assert all("left while waiting" not in call for call in embedder.calls)


def test_the_event_loop_runs_while_a_forward_is_in_progress():
    embedder = Recording(hold=True)
    batcher = _batcher(embedder)

    async def main():
        task = asyncio.create_task(batcher.run(("slow",), identity))
        await _wait_started(embedder)
        ticks = 0
        for _ in range(5):  # the loop keeps turning while the encode blocks its thread
            await asyncio.sleep(0.001)
            ticks += 1
        assert not task.done()
        embedder.release.set()
        await task
        return ticks

    assert asyncio.run(main()) == 5


FORGET = ForgetSet(
    "capitals",
    (
        ForgetEntry("What is the capital of France?", "Paris is the capital of France."),
        ForgetEntry("What is the capital of Japan?", "Tokyo is the capital of Japan."),
        ForgetEntry("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ),
)


class Hashing:
    """A deterministic embedder over real texts (no model): :func:`vector` of each text."""

    def encode(self, texts):
        return torch.stack([vector(t) for t in texts]) if texts else torch.zeros(0, DIM)


def test_concurrent_admissions_decide_as_each_request_alone():
    embedder = Hashing()
    gate = UnlearningGate(
        {"capitals": FORGET},
        embedder,
        ServerMetrics(CollectorRegistry()),
        {},
        LimitsConfig(),
    )
    alone = ForgetGate(FORGET, embedder)
    prompts = [
        "What is the capital of France?",
        "Tell me a story about a lighthouse keeper. It is long.",
        "Who wrote Hamlet? And the capital of Japan?",
        "zzzz",
        "Paris",
    ]
    thresholds = [0.5, 0.9, 0.99, 0.7, 0.8]

    async def main():
        jobs = []
        for prompt, threshold in zip(prompts, thresholds, strict=True):
            params = UnlearningParams(forget_set="capitals", threshold=threshold)
            jobs.append(gate.admit(params, gate.prepare(params, {"prompt": prompt})))
        return await asyncio.gather(*jobs)

    admitted = asyncio.run(main())
    for prompt, threshold, a in zip(prompts, thresholds, admitted, strict=True):
        expected = alone.decide(chunks([prompt]), threshold)
        assert a.state.decision == expected, prompt
        assert a.params.targets == expected.targets
    assert {a.state.decision.opened for a in admitted} == {True, False}  # both kinds seen


def test_a_trained_gate_and_a_cosine_gate_decide_through_one_batch_as_alone():
    embedder = Hashing()
    torch.manual_seed(0)
    trained = TrainedGate(FORGET, embedder, PairClassifier(DIM), threshold=0.5)
    gate = UnlearningGate(
        {"capitals": FORGET, "trained": FORGET},
        embedder,
        ServerMetrics(CollectorRegistry()),
        {},
        LimitsConfig(),
        {"trained": trained},
    )
    cosine = ForgetGate(FORGET, embedder)
    prompts = ["What is the capital of France?", "Who wrote Hamlet?", "zzzz", "Paris. Tokyo."]

    async def main():
        jobs = []
        for prompt in prompts:
            for name in ("capitals", "trained"):
                params = UnlearningParams(forget_set=name)
                jobs.append(gate.admit(params, gate.prepare(params, {"prompt": prompt})))
        return await asyncio.gather(*jobs)

    admitted = iter(asyncio.run(main()))
    for prompt in prompts:
        pieces = chunks([prompt])
        assert next(admitted).state.decision == cosine.decide_chunks(pieces, 0.5)
        assert next(admitted).state.decision == trained.decide_chunks(pieces)


def test_cached_pieces_are_not_encoded_again_and_give_the_same_rows():
    embedder = Recording()
    cache = PieceCache(100)
    batcher = _batcher(embedder, cache=cache)

    async def each(requests):
        return [await batcher.run(r, identity) for r in requests]

    first = asyncio.run(each(REQUESTS))
    again = asyncio.run(each(REQUESTS))
    for pieces, a, b in zip(REQUESTS, first, again, strict=True):
        expected = torch.stack([vector(p) for p in pieces]) if pieces else torch.zeros(0, 0)
        assert torch.equal(a, expected) and torch.equal(b, expected), pieces
    # The first pass encoded each distinct piece once, only those not seen before; the
    # second pass encoded nothing.
    encoded = [p for call in embedder.calls for p in call]
    assert sorted(encoded) == sorted({p for r in REQUESTS for p in r})
    assert embedder.calls == [
        ["You are a helpful assistant.", "What is the capital of France?"],
        ["Tell me about Paris."],
        ["Write a poem."],
        ["a", "b"],
    ]


def test_the_cache_keeps_at_most_its_capacity_least_recently_used_dropped_first():
    cache = PieceCache(2)
    cache.store(["a", "b"], torch.stack([vector("a"), vector("b")]))
    assert set(cache.lookup(["a"])) == {"a"}  # "a" now the most recently used
    cache.store(["c"], vector("c")[None])
    assert len(cache) == 2 and set(cache.lookup(["a", "b", "c"])) == {"a", "c"}
    off = PieceCache(0)
    off.store(["a"], vector("a")[None])
    assert len(off) == 0 and off.lookup(["a"]) == {}
    with pytest.raises(ValueError):
        PieceCache(-1)


def test_a_failed_encode_caches_nothing_and_still_fails_its_request_only():
    embedder = Recording(poison="bad")
    cache = PieceCache(100)
    batcher = _batcher(embedder, cache=cache, max_wait_s=0.05)

    async def main():
        return await asyncio.gather(
            batcher.run(("good", "bad"), identity),
            batcher.run(("good", "fine"), identity),
            return_exceptions=True,
        )

    failed, ok = asyncio.run(main())
    assert isinstance(failed, ValueError)
    assert torch.equal(ok, torch.stack([vector("good"), vector("fine")]))
    assert set(cache.lookup(["good", "fine", "bad"])) == {"good", "fine"}


def _admit_twice(gate: UnlearningGate, prompt: str) -> None:
    params = UnlearningParams(forget_set="capitals", threshold=0.5)

    async def twice():
        for _ in range(2):
            await gate.admit(params, gate.prepare(params, {"prompt": prompt}))

    asyncio.run(twice())


def test_the_gate_caches_per_limits_and_not_at_zero():
    for capacity, encodes in ((4096, 1), (0, 2)):
        embedder = Recording()
        gate = UnlearningGate(
            {"capitals": FORGET},
            embedder,
            ServerMetrics(CollectorRegistry()),
            {},
            LimitsConfig(gate_cache_pieces=capacity),
        )
        embedder.calls.clear()  # the entries' own embedding at start-up
        _admit_twice(gate, "Tell me about Paris.")
        assert len(embedder.calls) == encodes, capacity
