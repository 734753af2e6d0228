"""The ``unlearning`` step plugin: soft penalties, then hard blocks, on the gated rows.

For each row whose request the gate opened (``targets`` non-empty), on its logits ``s``::

    1. soft:  s_v -= lambda * sim(v), or s_v = -inf when sim(v) >= delta   (a constant vector
              per request; see :mod:`.semantic`)
       text:  s_v = -inf for every token v that completes a phrase after the row's recent text
              in any spelling, and every k steps a penalty or ban on the candidates that bring
              the recent text's meaning towards a phrase (see :mod:`.continuation`)
    2. hard:  s_v = -inf for every token v that would complete a forbidden token sequence given
              the row's generated suffix (see :mod:`.trie`)

Hard blocks come last so that nothing re-enables a blocked token. A row under the ``abstain``
policy (or ``refuse``, which only reaches the engine for targets a refinement round added) is
then forced through the set's abstention phrase from the first step whose most likely token
was blocked (:mod:`.abstain`). What the filters forbid is
compiled once per (forget set, retrieved entries) and shared by the requests that retrieve the
same entries. Rows whose gate stayed closed pass through untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..pipeline import Row, StepPlugin
from ..topk import argmax
from .abstain import Abstention, AbstentionPhrase, force
from .continuation import NO_TOKENS, ContinuationCheck, LexicalBans, PhraseIndex, TokenTexts
from .forget_set import ForgetSet
from .gate import Embedder
from .params import UnlearningParams
from .phrases import forbidden_phrases, semantic_words
from .policy import stricter_or_equal
from .semantic import penalty, similarity
from .trie import TokenTrie, TrieCursor, surface_forms

#: Compiled targets kept per forget set (least recently used dropped first).
CACHE_SIZE = 64
#: Soft subtrahends (a vocabulary of floats each) kept per compiled targets: requests may
#: pick their own ``delta`` and ``lambda``.
SOFT_VARIANTS = 4

Encode = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class CompiledTargets:
    trie: TokenTrie
    #: Tokens banned at every step (single-token phrases), as an index tensor.
    root_bans: torch.Tensor
    #: ``sim(v)`` of every vocabulary token to the forbidden words (None: no soft filter).
    sim: torch.Tensor | None
    #: The continuation check's phrases, indexed once for every row that retrieves these
    #: entries (None: the check is off), and their embeddings (None: no embedder).
    phrases: PhraseIndex | None
    phrase_embeddings: torch.Tensor | None
    #: The check's lexical bans per suffix, kept for every row of these entries (None: off).
    lexical: LexicalBans | None
    #: The soft filter's subtrahends by ``(delta, lambda)``, shared by the rows that ask for
    #: the same (:meth:`soft`).
    _soft: OrderedDict[tuple[float, float], torch.Tensor] = field(
        default_factory=OrderedDict, init=False, compare=False, repr=False
    )

    def soft(self, delta: float, lam: float) -> torch.Tensor | None:
        """The soft filter's constant ``[vocab]`` subtrahend for ``delta`` and ``lambda``
        (None: no soft filter), one tensor for every row that asks for the same: a batch
        whose rows share it subtracts one broadcast row (:meth:`Unlearning._constant`)."""
        if self.sim is None:
            return None
        key = (delta, lam)
        hit = self._soft.get(key)
        if hit is None:
            hit = self._soft[key] = penalty(self.sim, delta, lam)
            if len(self._soft) > SOFT_VARIANTS:
                self._soft.popitem(last=False)
        self._soft.move_to_end(key)
        return hit


class ForgetFilters:
    """One forget set, ready for the engine: compiles retrieved entries into filters."""

    def __init__(
        self,
        forget_set: ForgetSet,
        encode: Encode,
        embedder: Embedder | None = None,
        token_table: torch.Tensor | None = None,
        abstention: AbstentionPhrase | None = None,
        vocabulary: TokenTexts | None = None,
    ) -> None:
        """``token_table``: every vocabulary token's text embedding by ``embedder`` (see
        :mod:`.semantic`); without both, only the hard filter runs. ``abstention``: the set's
        phrase for rows under ``abstain`` (None: such rows are steered). ``vocabulary``: each
        token's text, for the continuation check (:mod:`.continuation`; None: off)."""
        self.vocabulary = vocabulary
        self.forget_set = forget_set
        self.abstention = abstention
        self.encode = encode
        self.embedder = embedder
        self.token_table = token_table
        self._cache: OrderedDict[tuple[int, ...], CompiledTargets] = OrderedDict()

    def compile(self, targets: tuple[int, ...]) -> CompiledTargets:
        hit = self._cache.get(targets)
        if hit is not None:
            self._cache.move_to_end(targets)
            return hit
        entries = [self.forget_set.entries[i] for i in targets]
        forms = [form for phrase in forbidden_phrases(entries) for form in surface_forms(phrase)]
        trie = TokenTrie(self.encode(forms))
        words = semantic_words(entries)
        meaning = None  # the revealing words' embeddings: the soft filter's and the check's
        if self.embedder is not None and words:
            meaning = self.embedder.encode(words)
        sim = None
        if meaning is not None and self.token_table is not None:
            sim = similarity(self.token_table, meaning)
        phrases = lexical = None
        if self.vocabulary is not None:
            phrases = PhraseIndex(forbidden_phrases(entries))
            lexical = LexicalBans(phrases, self.vocabulary)
        compiled = CompiledTargets(
            trie, torch.tensor(trie.root_bans, dtype=torch.long), sim, phrases, meaning, lexical
        )
        self._cache[targets] = compiled
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return compiled


#: ``observe(rows, blocked, penalized, abstained)``, per step over the filtered rows:
#: ``blocked`` where the row's most likely token was banned, ``penalized`` where a soft
#: penalty alone (no ban) displaced it, ``abstained`` where the row began its abstention
#: phrase (adapters/ turn them into the per-request report).
Observer = Callable[[Sequence[Row], torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class _RowState:
    params: UnlearningParams
    compiled: CompiledTargets
    cursor: TrieCursor
    #: The soft filter's constant ``[vocab]`` subtrahend (None: soft filter off).
    soft: torch.Tensor | None
    #: The row's abstention phrase under ``abstain`` (None: steered).
    abstention: Abstention | None
    #: The row's continuation check (None: the set has no vocabulary texts).
    continuation: ContinuationCheck | None


@dataclass(frozen=True)
class _BatchConstants:
    """What a step of a given batch composition subtracts and bans regardless of the rows'
    outputs: the stacked soft penalties and the root bans' (row, token) indices."""

    states: tuple[_RowState, ...]
    #: ``[rows with soft, vocab]``, or ``[1, vocab]`` when every row has the same; None: no
    #: row has the soft filter on.
    soft: torch.Tensor | None
    #: Which filtered rows the soft rows are (None: all of them).
    soft_rows: torch.Tensor | None
    ban_rows: torch.Tensor
    ban_tokens: torch.Tensor


class Unlearning(StepPlugin):
    """Guarded unlearning's filters (the gate runs in the server, before the engine)."""

    name = "unlearning"

    def __init__(
        self, filters: Mapping[str, ForgetFilters], observe: Observer | None = None
    ) -> None:
        self.filters = filters
        self.observe = observe
        self._states: dict[int, _RowState | None] = {}
        self._batch: _BatchConstants | None = None

    def _state(self, row: Row) -> _RowState | None:
        if row.uid not in self._states:
            params = row.params(self.name)
            assert isinstance(params, UnlearningParams)
            state = None
            if params.targets:
                filters = self.filters[params.forget_set]
                compiled = filters.compile(params.targets)
                soft = compiled.soft(params.delta, params.penalty) if params.soft else None
                abstention = None
                forced = params.on_match is not None and stricter_or_equal(
                    params.on_match, "abstain"
                )
                if forced and filters.abstention is not None:
                    abstention = Abstention(filters.abstention)
                    if row.stream.output:  # a preempted request, back with its output
                        abstention.resume(row.stream.output)
                check = None
                if filters.vocabulary is not None and compiled.phrases is not None:
                    semantic = params.continuation and compiled.phrase_embeddings is not None
                    check = ContinuationCheck(
                        compiled.phrases,
                        filters.vocabulary,
                        filters.embedder if semantic else None,
                        compiled.phrase_embeddings if semantic else None,
                        every=params.check_every,
                        window=params.check_window,
                        tau=params.check_threshold,
                        penalty=params.penalty,
                        lexical=compiled.lexical,
                    )
                state = _RowState(
                    params, compiled, TrieCursor(compiled.trie), soft, abstention, check
                )
            self._states[row.uid] = state
        return self._states[row.uid]

    def apply(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        active = [(i, s) for i, row in enumerate(rows) if (s := self._state(row)) is not None]
        if not active:
            return logits
        # Usually every row is filtered: then the rows are worked on in place, no gather or
        # scatter of the batch's logits.
        every_row = len(active) == len(rows)
        at = None if every_row else torch.tensor([i for i, _ in active], device=logits.device)
        sub = logits if at is None else logits[at]
        top = argmax(sub)

        constant = self._constant([s for _, s in active], sub.device, sub.dtype)
        if constant.soft is not None:
            if constant.soft_rows is None:
                sub -= constant.soft
            else:
                sub[constant.soft_rows] -= constant.soft
        # The continuation check (:mod:`.continuation`): text-level, before the hard blocks.
        # Its lexical bans are memoised index tensors: every row's go in one indexed write.
        check_bans: list[torch.Tensor] = []
        for j, (i, state) in enumerate(active):
            check = state.continuation
            if check is None:
                check_bans.append(NO_TOKENS)
                continue
            output = rows[i].stream.output
            window = check.text(output)
            check_bans.append(check.lexical_bans(window))
            penalties = check.penalties(sub[j], output, window)
            if penalties:
                at_tokens = torch.tensor(list(penalties), device=sub.device)
                sub[j, at_tokens] -= torch.tensor(
                    list(penalties.values()), device=sub.device, dtype=sub.dtype
                )
        lexical = [len(t) for t in check_bans]
        if any(lexical):
            sub[_row_index(lexical, sub.device), torch.cat(check_bans).to(sub.device)] = -torch.inf
        after_soft = argmax(sub)

        # Hard blocks, last: the root's single-token phrases (index tensors built once per
        # batch composition) plus each live state's completions (a few tokens per row), as
        # one indexed write.
        dynamic: list[int] = []
        counts: list[int] = []
        for i, state in active:
            state.cursor.follow(rows[i].stream.output)
            bans = state.cursor.bans()
            dynamic.extend(bans)
            counts.append(len(bans))
        ban_rows, ban_tokens = constant.ban_rows, constant.ban_tokens
        if dynamic:
            ban_rows = torch.cat([ban_rows, _row_index(counts, sub.device)])
            ban_tokens = torch.cat([ban_tokens, torch.tensor(dynamic, device=sub.device)])
        sub[ban_rows, ban_tokens] = -torch.inf

        blocked = torch.isneginf(sub.gather(1, top[:, None]))[:, 0]
        abstained = self._abstain(sub, blocked, active, rows)
        if self.observe is not None:
            penalized = (after_soft != top) & ~blocked
            self.observe([rows[i] for i, _ in active], blocked, penalized, abstained)
        if at is not None:
            logits[at] = sub
        return logits

    def _constant(
        self, states: Sequence[_RowState], device: torch.device, dtype: torch.dtype
    ) -> _BatchConstants:
        """The per-row constant parts of a step for ``states`` (the filtered rows, in order),
        kept while the batch's composition stays the same (most decode steps)."""
        cached = self._batch
        if (
            cached is not None
            and len(cached.states) == len(states)
            and all(a is b for a, b in zip(cached.states, states, strict=True))
            and cached.ban_tokens.device == device
            and (cached.soft is None or cached.soft.dtype == dtype)
        ):
            return cached
        soft = [(j, s.soft) for j, s in enumerate(states) if s.soft is not None]
        soft_matrix = soft_rows = None
        if soft and len(soft) == len(states) and all(v is soft[0][1] for _, v in soft):
            # Every row subtracts the same vector: one row, broadcast (a [rows, vocab] copy
            # would be read whole at every step).
            soft_matrix = soft[0][1][None].to(device, dtype)
        elif soft:
            soft_matrix = torch.stack([v for _, v in soft]).to(device, dtype)
            if len(soft) < len(states):
                soft_rows = torch.tensor([j for j, _ in soft], device=device)
        bans = [s.compiled.root_bans for s in states]
        self._batch = _BatchConstants(
            tuple(states),
            soft_matrix,
            soft_rows,
            _row_index([len(b) for b in bans], device),
            torch.cat(bans).to(device),
        )
        return self._batch

    def _abstain(
        self,
        sub: torch.Tensor,
        blocked: torch.Tensor,
        active: Sequence[tuple[int, _RowState]],
        rows: Sequence[Row],
    ) -> torch.Tensor:
        """Force the phrase's due token on the abstaining rows of the filtered ``sub`` (in
        place); True where a row began its phrase at this step."""
        began = torch.zeros(len(active), dtype=torch.bool)
        if not any(s.abstention is not None for _, s in active):
            return began
        flags = blocked.tolist()
        for j, (i, state) in enumerate(active):
            if state.abstention is None:
                continue
            stream = rows[i].stream
            output = stream.output
            token = state.abstention.next_token(output, flags[j], stream.last)
            if token is None:
                continue
            if torch.isneginf(sub[j, token]):
                state.abstention.abandon(len(output))  # the filters win over the phrase
                continue
            force(sub[j], token)
            began[j] = state.abstention.began_at(len(output))
        return began

    def release(self, uid: int) -> None:
        state = self._states.pop(uid, None)
        if self._batch is not None and any(s is state for s in self._batch.states):
            self._batch = None  # drop the departed row's tensors with it


def _row_index(counts: Sequence[int], device: torch.device) -> torch.Tensor:
    """Row ``j`` repeated ``counts[j]`` times: the row of each entry of the rows' entries
    concatenated in row order."""
    return torch.arange(len(counts)).repeat_interleave(torch.tensor(counts)).to(device)
