"""The continuation check (decoding/unlearning/continuation.py): a phrase spelt in other tokens,
which the token trie and the per-token soft filter pass, is blocked at the text level."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import torch

from decoding.pipeline import CorrectionPipeline
from decoding.unlearning import ForgetFilters, Unlearning
from decoding.unlearning.continuation import (
    ContinuationCheck,
    LexicalBans,
    PhraseIndex,
    TokenTexts,
    normalise,
)
from decoding.unlearning.semantic import similarity
from decoding.unlearning.trie import TokenTrie, TrieCursor, surface_forms

from .test_unlearning import CAPITALS, INDEX, VOCAB, encode, gated, ids

SPELT = ids(
    "P", "a", "r", "i"
)  # "Pari": one token short of "Paris", in no tokenization the trie knows


def test_the_trie_and_the_per_token_filter_pass_a_spelt_answer():
    """The weakness the check closes: per-token matching lets "P"+"a"+"r"+"i"+"s" through."""
    trie = TokenTrie(encode(surface_forms("Paris")))
    cursor = TrieCursor(trie)
    cursor.follow(SPELT)
    assert INDEX["s"] not in cursor.bans() and INDEX["s"] not in trie.root_bans
    # Single letters mean nothing like "paris": an embedding table where only whole-name
    # tokens are near it, as MiniLM's is.
    table = torch.zeros(len(VOCAB), 2)
    for name in (" Paris", "Par"):
        table[INDEX[name], 0] = 1.0
    table[:, 1] = (table[:, 0] == 0).float()
    sim = similarity(table, torch.tensor([[1.0, 0.0]]))
    assert sim[INDEX["s"]] == 0 and sim[INDEX[" Paris"]] == 1


def test_the_check_bans_the_token_that_completes_the_phrase_in_any_spelling():
    check = ContinuationCheck(PhraseIndex(["Paris"]), TokenTexts(VOCAB))
    def bans(window: str) -> list[int]:
        return check.lexical_bans(window).tolist()

    assert INDEX["s"] in bans("The capital is Pari")
    assert INDEX["is"] in bans("The capital is Par")  # "Par"+"is" the trie knows
    assert bans("The capital is Pa") == []  # nothing completes it in one token
    assert bans("The capital is Lyon") == []
    assert bans("Compari") == []  # a phrase starts at a word start only


def test_the_plugin_blocks_the_spelt_answer_that_per_token_matching_passes():
    filters = ForgetFilters(CAPITALS, encode, embedder=None, vocabulary=TokenTexts(VOCAB))
    pipeline = CorrectionPipeline({"unlearning": Unlearning({"capitals": filters})})
    output: list[int] = []
    pipeline.add(0, gated([0], soft=False), [9], output)
    output.extend(SPELT)
    step = pipeline.apply(torch.zeros(1, len(VOCAB)))
    assert torch.isneginf(step[0, INDEX["s"]])
    assert not torch.isneginf(step[0, INDEX["."]])

    # Without the vocabulary's texts (the check off), the same row gets "s": the control.
    bare = ForgetFilters(CAPITALS, encode, embedder=None)
    pipeline = CorrectionPipeline({"unlearning": Unlearning({"capitals": bare})})
    output = []
    pipeline.add(0, gated([0], soft=False), [9], output)
    output.extend(SPELT)
    assert not torch.isneginf(pipeline.apply(torch.zeros(1, len(VOCAB)))[0, INDEX["s"]])


def test_a_multi_word_phrase_is_completed_across_tokens_and_words():
    vocab = TokenTexts([" City", " of", " Li", "ght", " Light", " Lights", " Paris", "."])
    check = ContinuationCheck(PhraseIndex(["City of Light"]), vocab)
    assert check.lexical_bans("It is the City of Li").tolist() == [3]
    assert check.lexical_bans("It is the City of").tolist() == [4, 5]
    assert check.lexical_bans("It is the city").tolist() == []


class Meaning:
    """An embedder whose vectors say how much of "paris" a text spells (its share of the
    letters p, a, r, i, s in order at the end): a stand-in for MiniLM's judgement."""

    name = "meaning"

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            t = normalise(text).replace(" ", "")
            share = max((n for n in range(6) if t.endswith("paris"[:n])), default=0) / 5
            rows.append([share, (1 - share**2) ** 0.5])
        return torch.tensor(rows)


def test_every_kth_step_the_semantic_part_bans_what_reaches_tau_and_penalises_what_nears_it():
    vocab = TokenTexts(["P", "a", "r", "i", "s", "x", " the"])
    phrase = Meaning().encode(["paris"])
    check = ContinuationCheck(
        PhraseIndex(["Zzz"]), vocab, Meaning(), phrase, every=2, window=8, tau=0.95
    )
    logits = torch.zeros(len(vocab.texts))
    out = check.subtrahend(logits, [0, 1, 2, 3])  # "Pari", a 2nd step: "s" reaches 1.0 >= tau
    assert torch.isinf(out[4]) and out[5] == 0
    out = check.subtrahend(logits, [0, 1])  # "Pa": "r" brings it nearer, below tau
    assert 0 < out[2] < torch.inf and out[5] == 0
    assert torch.all(check.subtrahend(logits, [0, 1, 2]) == 0)  # not a 2nd step


def test_the_phrase_index_keeps_what_the_pairwise_rule_keeps_without_comparing_every_pair():
    """A phrase holding a shorter one as whole words is left out (its ban covers it): the
    index's word-run test against the pairwise definition, on phrases built to collide, and
    its cost at 10,000 phrases (the pairwise rule took seconds per row there)."""
    rng = random.Random(0)
    words = ["paris", "city", "of", "light", "the", "big", "apple", "new", "york", "a"]
    phrases = [" ".join(rng.choices(words, k=rng.randint(1, 4))) for _ in range(400)]
    phrases += ["Paris!", "  City-of  Light ", "ville", "ville lumiere", "cityscape", "ap ple"]
    normal = [p for p in dict.fromkeys(normalise(p).strip() for p in phrases) if p]
    kept = [p for p in normal if not any(q != p and f" {q} " in f" {p} " for q in normal)]
    pending: dict[str, set[str]] = {}
    for p in kept:
        for i in range(1, len(p)):
            pending.setdefault(p[:i], set()).add(p[i:])
    index = PhraseIndex(phrases)
    assert index.pending == pending
    assert index.longest == max(len(p) for p in kept)
    assert "ville lumiere" not in {p + r for p, rs in index.pending.items() for r in rs}
    assert "cityscape" in {p + r for p, rs in index.pending.items() for r in rs}

    many = [f"w{i} x{i % 97} y{i % 89}" for i in range(10_000)]
    started = time.perf_counter()
    PhraseIndex(many)
    assert time.perf_counter() - started < 5  # well under 0.5 s here; the pairwise rule: minutes


def test_shared_lexical_bans_are_the_remainders_bans_at_every_window_and_memo_size():
    """decoding/unlearning/continuation.py ``LexicalBans``: the bans kept per suffix and shared
    by rows are, at every window, the tokens starting with one of the window's remainders
    (``R(w)``, computed afresh), whatever the memo holds or has dropped."""
    rng = random.Random(1)
    # Short words over few letters: many words start like others, so that a window often
    # ends inside several phrases at once (several suffixes ban, their bans are merged).
    words = ["".join(rng.choices("aenst", k=rng.randint(2, 4))) for _ in range(24)]
    phrases = [" ".join(rng.choices(words, k=rng.choice([2, 3]))) for _ in range(80)]
    texts = sorted({w[i:j] for w in words for i in range(len(w)) for j in range(i + 1, len(w) + 1)})
    vocab = TokenTexts([*texts, *(" " + t for t in texts), " ", "."])
    index = PhraseIndex(phrases)
    noise = ["".join(rng.choices([*texts, " ", ". "], k=rng.randint(0, 6))) for _ in range(400)]
    cut = [(p := rng.choice(phrases))[: rng.randint(1, len(p))] for _ in noise]
    # Half the windows end inside a phrase (the cases that ban), half anywhere.
    windows = [w + rng.choice(["", " ", ". "]) + c for w, c in zip(noise, cut, strict=True)] + noise
    for capacity in (0, 5, 1 << 16):
        shared = LexicalBans(index, vocab, capacity)
        rows = [ContinuationCheck(index, vocab, lexical=shared) for _ in range(2)]
        banning = merged = 0
        for n, window in enumerate(windows):
            expected = sorted({v for r in rows[0].remainders(window) for v in vocab.starting(r)})
            assert rows[n % 2].lexical_bans(window).tolist() == expected, (capacity, window)
            banning += bool(expected)
            merged += sum(len(shared._of(s)) > 0 for s in shared.suffixes(window)) > 1
        assert banning > 150 and merged > 10  # the comparison is not vacuous
        assert shared._size <= capacity and shared._size == sum(map(len, shared._memo.values()))
