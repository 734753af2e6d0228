"""The continuation check: judge a gated row's recent *text*, not its tokens one by one.

The trie (:mod:`.trie`) bans the token sequences of a phrase's usual tokenizations and the soft
filter (:mod:`.semantic`) judges each candidate token's text alone; a phrase the model spells in
other tokens ("P" + "ari" + "s") or in several words, none revealing alone, passes both.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import OrderedDict
from collections.abc import Sequence

import torch

from .gate import Embedder

#: Defaults: the semantic part every ``k`` steps, over the last ``window`` tokens, banning at
#: cosine ``tau`` (not yet calibrated on the eval: a conservative value).
DEFAULT_EVERY = 4
DEFAULT_WINDOW = 8
DEFAULT_TAU = 0.8
#: Candidates (the row's most likely tokens) the semantic part judges.
CANDIDATES = 8

#: Token ids one :class:`LexicalBans` keeps at most over all of its suffixes (least recently
#: used suffixes dropped first): 512 KiB of references per set of retrieved entries.
MEMO_TOKENS = 1 << 16

_NON_WORD = re.compile(r"[^\w]+")
#: No token ids (what a window without a pending remainder bans).
NO_TOKENS = torch.zeros(0, dtype=torch.long)


def normalise(text: str) -> str:
    """Lower case, each run of non-word characters one space: what "spells" a phrase."""
    return _NON_WORD.sub(" ", text.lower())


class PhraseIndex:
    """The lexical part's index over a set of phrases ``P``, built once per set of retrieved
    entries (decoding/unlearning/plugin.py ``CompiledTargets``) and shared by the rows that
    retrieve them: ``P`` normalised, without the phrases that hold a shorter one of ``P`` as
    whole words (banning the shorter one covers them), and every proper prefix of a kept
    phrase mapped to the remainders that complete it.

    A normalised phrase is its words joined by single spaces, so ``q`` occurs in ``p`` as whole
    words exactly when ``q`` is one of ``p``'s contiguous word runs: checking those runs
    (``w (w + 1) / 2`` for a phrase of ``w`` words) against the set costs ``O(|P| w^2)``, where
    comparing every pair of phrases cost ``O(|P|^2)`` (10^8 substring tests per row at 10,000
    phrases, seconds per request: bench/unlearning.py).
    """

    def __init__(self, phrases: Sequence[str]) -> None:
        normal = [p for p in dict.fromkeys(normalise(p).strip() for p in phrases) if p]
        present = set(normal)
        kept = [p for p in normal if not _holds_another(p, present)]
        #: proper prefix -> the remainders completing a phrase after it
        self.pending: dict[str, set[str]] = {}
        for p in kept:
            for i in range(1, len(p)):
                self.pending.setdefault(p[:i], set()).add(p[i:])
        self.longest = max((len(p) for p in kept), default=0)


def _holds_another(phrase: str, present: set[str]) -> bool:
    """Whether a shorter phrase of ``present`` is a run of ``phrase``'s whole words."""
    words = phrase.split(" ")
    n = len(words)
    return any(
        " ".join(words[i:j]) in present for i in range(n) for j in range(i + 1, n + 1) if j - i < n
    )


class LexicalBans:
    """The lexical part's bans after a window, shared by the rows of one :class:`PhraseIndex`.

    With ``S(w)`` the suffixes of ``N(w)`` (its last ``longest + 1`` characters, a space
    before) that start at a word start, and for a suffix ``s``::

        B(s) = { v : r in pending(s), N(text(v)) starts with r }

    the bans after ``w`` are ``B(S(w)) = union_{s in S(w)} B(s)``, which is
    ``{ v : r in R(w), N(text(v)) starts with r }`` (:class:`ContinuationCheck`). The same
    few suffixes recur at nearly every step (the last word of a sentence: "a", "the", "of"),
    and one short suffix can have hundreds of remainders (after "a": every phrase starting
    with an "a"; about 1 ms per row at 10,000 phrases), so each ``B(s)`` is computed once and
    kept for every row and step, up to :data:`MEMO_TOKENS` token ids in all.
    """

    def __init__(
        self, phrases: PhraseIndex, vocabulary: TokenTexts, capacity: int = MEMO_TOKENS
    ) -> None:
        self.pending = phrases.pending
        self.longest = phrases.longest
        self.vocabulary = vocabulary
        self.capacity = capacity
        self._memo: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._size = 0

    def suffixes(self, window: str) -> list[str]:
        """``S(w)`` restricted to the suffixes that begin some phrase (the others ban
        nothing)."""
        # The leading space stands for the window's start, where a word may begin.
        text = (" " + normalise(window))[-(self.longest + 1) :]
        return [
            text[start + 1 :]
            for start, char in enumerate(text)
            if char == " " and text[start + 1 :] in self.pending
        ]

    def after(self, window: str) -> torch.Tensor:
        """``B(S(w))``: token ids, sorted, each once (``int64``; the plugin indexes the
        logits with them as they are, no list built per step)."""
        parts = [p for p in (self._of(s) for s in self.suffixes(window)) if len(p)]
        if not parts:
            return NO_TOKENS
        if len(parts) == 1:
            return parts[0]
        return torch.unique(torch.cat(parts))

    def _of(self, suffix: str) -> torch.Tensor:
        """``B(suffix)``, sorted: from the memo, else computed and kept."""
        hit = self._memo.get(suffix)
        if hit is not None:
            self._memo.move_to_end(suffix)
            return hit
        starting = self.vocabulary.starting
        bans = sorted({v for r in self.pending[suffix] for v in starting(r)})
        out = torch.tensor(bans, dtype=torch.long) if bans else NO_TOKENS
        if len(bans) <= self.capacity:
            self._memo[suffix] = out
            self._size += len(bans)
            while self._size > self.capacity:
                _, dropped = self._memo.popitem(last=False)
                self._size -= len(dropped)
        return out


class ContinuationCheck:
    """One row's check over its retrieved entries' phrases (their :class:`PhraseIndex`).

    With ``w`` the text of the row's last ``W`` generated tokens, ``N`` :func:`normalise`,
    ``P`` the phrases (normalised; those holding a shorter phrase of ``P`` left out) and
    ``text(v)`` a token's text:

    **Lexical, every step of a gated row.** The pending remainders of ``w`` are::

        R(w) = { p[i:] : p in P, 0 < i < |p|, N(w) ends with p[:i] at a word start }

    and every token ``v`` with ``N(text(v))`` starting with some ``r`` in ``R(w)`` is banned: it
    completes ``p`` whatever tokens spelt its start. ``R(w)`` is a few dictionary look-ups (one
    per word start in the window's normalised text) and each ``r`` one binary search in the
    vocabulary's sorted normalised texts, so the cost does not grow with the vocabulary.

    **Semantic, every ``k``-th step** (``len(output) % k == 0``), on the row's ``m`` most likely
    candidates, with ``E`` the unit-norm sentence embedding and ``s(x) = max_p max(0, E(x) .
    E(p))``::

        ban v                                    if s(w + text(v)) >= tau and s(w + text(v)) > s(w)
        logit_v -= lambda * (s(w + text(v)) - s(w))   otherwise, where positive

    It penalises the candidates that bring the window's meaning towards a phrase (a paraphrase
    being completed) in proportion to how far, and bans those that reach ``tau``; ``m + 1``
    embeddings of short texts, hence every ``k``-th step only.
    """

    def __init__(
        self,
        phrases: PhraseIndex,
        vocabulary: TokenTexts,
        embedder: Embedder | None = None,
        phrase_embeddings: torch.Tensor | None = None,
        every: int = DEFAULT_EVERY,
        window: int = DEFAULT_WINDOW,
        tau: float = DEFAULT_TAU,
        penalty: float = 1.0,
        lexical: LexicalBans | None = None,
    ) -> None:
        """``phrase_embeddings``: ``E(p)`` of the semantic part's phrases (with ``embedder``;
        without them that part is off). ``lexical``: the bans of ``phrases`` over
        ``vocabulary``, shared with the other rows of these phrases (None: the row's own)."""
        self.lexical = lexical if lexical is not None else LexicalBans(phrases, vocabulary)
        self.pending = phrases.pending
        self.longest = phrases.longest
        self.vocabulary = vocabulary
        self.embedder = embedder
        self.phrase_embeddings = phrase_embeddings
        self.every = every
        self.window = window
        self.tau = tau
        self.penalty = penalty

    def text(self, output: Sequence[int]) -> str:
        return self.vocabulary.text(output[-self.window :])

    def remainders(self, window: str) -> set[str]:
        """``R(w)``."""
        # The leading space stands for the window's start, where a word may begin.
        text = (" " + normalise(window))[-(self.longest + 1) :]
        out: set[str] = set()
        for start, char in enumerate(text):
            if char == " ":
                out |= self.pending.get(text[start + 1 :], set())
        return out

    def lexical_bans(self, window: str) -> torch.Tensor:
        """Every token that completes a phrase after ``window``, sorted (``int64``): the tokens
        starting with some ``r`` in :meth:`remainders`, through the shared
        :class:`LexicalBans`."""
        return self.lexical.after(window)

    def similarity(self, texts: Sequence[str]) -> torch.Tensor:
        """``s(x)`` for each text (zeros when the semantic part is off)."""
        if self.embedder is None or self.phrase_embeddings is None or not texts:
            return torch.zeros(len(texts))
        e = self.embedder.encode([t.strip() or "." for t in texts])
        return (e @ self.phrase_embeddings.T).amax(dim=-1).clamp_min(0)

    def penalties(
        self, logits: torch.Tensor, output: Sequence[int], window: str
    ) -> dict[int, float]:
        """The semantic part's amounts for the row's token after ``output`` (``window`` its
        :meth:`text`): what to subtract from the row's ``logits [vocab]``, only for the few
        candidates concerned (``inf``: banned); empty on the steps it does not run."""
        out: dict[int, float] = {}
        if self.embedder is None or len(output) % self.every != 0:
            return out
        top = torch.topk(logits, min(CANDIDATES, logits.shape[-1])).indices.tolist()
        texts = [self.vocabulary.texts[v] if v < len(self.vocabulary.texts) else "" for v in top]
        sims = self.similarity([window, *(window + t for t in texts)]).tolist()
        for v, s in zip(top, sims[1:], strict=True):
            if s >= self.tau and s > sims[0]:
                out[v] = math.inf
            elif s > sims[0]:
                out[v] = self.penalty * (s - sims[0])
        return out

    def subtrahend(self, logits: torch.Tensor, output: Sequence[int]) -> torch.Tensor:
        """Both parts as one dense ``[vocab]`` tensor: ``inf`` at the lexical bans, the
        semantic :meth:`penalties` elsewhere (the plugin applies them as sparse updates)."""
        window = self.text(output)
        out = torch.zeros_like(logits)
        for v, amount in self.penalties(logits, output, window).items():
            out[v] = amount
        out[self.lexical_bans(window)] = math.inf
        return out


class TokenTexts:
    """Each vocabulary token's text, and the tokens whose normalised text starts with a given
    string (binary search over the sorted normalised texts)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        pairs = sorted((normalise(t), i) for i, t in enumerate(self.texts))
        self._keys = [k for k, _ in pairs]
        self._ids = [i for _, i in pairs]

    def text(self, tokens: Sequence[int]) -> str:
        return "".join(self.texts[t] for t in tokens if 0 <= t < len(self.texts))

    def starting(self, prefix: str) -> list[int]:
        lo = bisect.bisect_left(self._keys, prefix)
        hi = bisect.bisect_left(self._keys, prefix + "\U0010ffff")
        return self._ids[lo:hi]
