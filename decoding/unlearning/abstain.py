"""The ``abstain`` policy's engine side: one row's forced abstention phrase.

A row under ``abstain`` decodes under the filters as ``steer`` does until, at some position
``p`` (the number of tokens it had generated), its most likely token is blocked. From there
the row's next ``k`` tokens are forced to the phrase's tokens ``t_0 .. t_{k-1}`` (every other
logit ``-inf``), then it decodes freely again, the filters still active. It abstains once.

The state is a function of the row's output, not of how often the engine called: vLLM also
runs the logits processors on a prompt's partial prefill steps and discards their tokens, so a
step at the trigger position ``p`` is decided afresh each time it is seen, and position
``p + i`` forces ``t_i`` only while the output since ``p`` is ``t_0 .. t_{i-1}`` (a row whose
output departs from the phrase, e.g. because a forced token was blocked, is done). A phrase
given up because its due token was blocked is decided afresh, too, if that position is seen
again. A row vLLM preempted comes back as a new row with its output so far:
:meth:`Abstention.resume` reads its progress from that output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Encode = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class AbstentionPhrase:
    """The operator's phrase in the served model's tokens: ``opening`` where the text so far
    ends in whitespace or a special token (a chat reply's start: the template ends in a
    newline), ``inline`` (after a space) where it continues a word or sentence (a prefilled
    reply, a completion, a reply under way)."""

    opening: tuple[int, ...]
    inline: tuple[int, ...]
    #: Tokens after which the phrase opens bare: those whose text ends in whitespace.
    bare_after: frozenset[int] = frozenset()

    @classmethod
    def encode(
        cls, text: str, encode: Encode, bare_after: frozenset[int] = frozenset()
    ) -> AbstentionPhrase:
        text = text.strip()
        if not text:
            raise ValueError("the abstention phrase is empty")
        opening, inline = encode([text, " " + text])
        if not opening or not inline:
            raise ValueError("the abstention phrase encodes to no tokens")
        return cls(tuple(opening), tuple(inline), bare_after)

    def after(self, last: int) -> tuple[int, ...]:
        """The phrase's tokens following the token ``last``."""
        return self.opening if last in self.bare_after else self.inline


class Abstention:
    """One row's progress through the phrase (see the module's docstring)."""

    def __init__(self, phrase: AbstentionPhrase) -> None:
        self.phrase = phrase
        #: Output length at which the row began to abstain (None: not yet).
        self.start: int | None = None
        self.tokens: tuple[int, ...] = ()
        #: The phrase was emitted (or abandoned): the row decodes freely from now on.
        self.done = False
        #: Output length at which the phrase was given up (its due token was blocked).
        self.abandoned_at: int | None = None

    def resume(self, output: Sequence[int]) -> None:
        """Take up a row that re-enters the batch with ``output`` (after a preemption): done
        when the output holds the whole phrase, forcing the rest when it ends in a part of it
        that began at a blocked step (what the row did before; a part of it by chance at the
        output's end is taken for the same)."""
        out = tuple(output)
        variants = (self.phrase.opening, self.phrase.inline)
        for tokens in variants:
            k = len(tokens)
            if any(out[i : i + k] == tokens for i in range(len(out) - k + 1)):
                self.done = True
                return
        for tokens in variants:
            for i in range(min(len(tokens) - 1, len(out)), 0, -1):
                if out[-i:] == tokens[:i]:
                    self.start, self.tokens = len(out) - i, tokens
                    return

    def next_token(self, output: Sequence[int], blocked: bool, last: int) -> int | None:
        """The token to force at this step (None: decode freely). ``blocked``: whether this
        step's most likely token was banned by the filters; ``last``: the row's last token
        (the prompt's while the output is empty)."""
        position = len(output)
        if self.abandoned_at is not None and position <= self.abandoned_at:
            self.done, self.abandoned_at, self.start = False, None, None  # a discarded step
        if self.done:
            return None
        if self.start is not None and position <= self.start:
            self.start = None  # the trigger step seen again (a discarded step): decide afresh
        if self.start is None:
            if not blocked:
                return None
            self.start = position
            self.tokens = self.phrase.after(last)
            return self.tokens[0]
        i = position - self.start
        if i < len(self.tokens) and tuple(output[self.start : position]) == self.tokens[:i]:
            return self.tokens[i]
        self.done = True
        return None

    def abandon(self, position: int) -> None:
        """Stop forcing at output length ``position`` (the token due is blocked: the filters
        win over the phrase)."""
        self.done, self.abandoned_at = True, position

    def began_at(self, position: int) -> bool:
        """Whether the abstention began at this step (what the report counts)."""
        return self.start == position and not self.done


#: What the other candidates' logits become while a token is forced: ``exp(-1e9)`` is 0 in
#: float32, so any sampler at any temperature picks the forced token, yet the row keeps finite
#: candidates should vLLM's own bans (``bad_words``) later remove the forced one: a row of
#: ``-inf`` only would sample from NaN.
FORCED_OUT = -1e9


def force(logits: torch.Tensor, token: int) -> None:
    """Leave ``token`` the only candidate with probability of the 1-D ``logits`` (in place);
    banned candidates (``-inf``) stay banned."""
    logits[torch.isfinite(logits)] = FORCED_OUT
    logits[token] = 0.0
