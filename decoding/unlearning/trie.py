"""The hard filter's data structure: a trie over forbidden token-id sequences.

A phrase can reach the output in several tokenizations that print the same words: with or
without a leading space, in lower, Title or UPPER case (or as written). :func:`surface_forms`
lists those texts; the caller tokenizes them and builds one :class:`TokenTrie` from every
sequence, once per set of retrieved entries.

Matching is incremental. A :class:`TrieCursor` holds, for one request, the trie nodes that the
tail of its output has reached (its *live states*). After each new token ``t`` the live states
become ``{child(s, t) : s in live ∪ {root}}``. The tokens banned at a step are the children of
the live states (and of the root) whose node ends a phrase: emitting one would complete a
forbidden sequence. Each node's completing children are computed once, so a step costs work
proportional to the row's live states, not to the number of phrases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ROOT = 0


def surface_forms(phrase: str) -> list[str]:
    """Texts that print ``phrase``: as written, lower, Title, UPPER and sentence-initial case,
    each with and without a leading space (no duplicates)."""
    cased = (
        phrase,
        phrase.lower(),
        phrase.title(),
        phrase.upper(),
        phrase[:1].upper() + phrase[1:],
    )
    forms: dict[str, None] = {}
    for text in cased:
        forms.setdefault(text, None)
        forms.setdefault(" " + text, None)
    return list(forms)


class TokenTrie:
    """Forbidden token-id sequences, with each node's completing tokens precomputed."""

    def __init__(self, sequences: Iterable[Sequence[int]]) -> None:
        children: list[dict[int, int]] = [{}]
        terminal: list[bool] = [False]
        for sequence in sequences:
            if not sequence:
                continue
            node = ROOT
            for token in sequence:
                nxt = children[node].get(token)
                if nxt is None:
                    nxt = len(children)
                    children[node][token] = nxt
                    children.append({})
                    terminal.append(False)
                node = nxt
            terminal[node] = True
        self.children = children
        self.terminal = terminal
        #: node -> tokens that complete a forbidden sequence from that node.
        self.completing: list[list[int]] = [
            [token for token, child in kids.items() if terminal[child]] for kids in children
        ]

    def __len__(self) -> int:
        """Number of nodes (the root included)."""
        return len(self.children)

    @property
    def root_bans(self) -> list[int]:
        """Tokens banned at every step: the single-token phrases."""
        return self.completing[ROOT]

    def advance(self, live: Sequence[int], token: int) -> list[int]:
        """The live states after ``token``. States without children are dropped: they can
        complete nothing further."""
        children = self.children
        nxt = []
        for state in (*live, ROOT):
            child = children[state].get(token)
            if child is not None and children[child]:
                nxt.append(child)
        return nxt


class TrieCursor:
    """One request's position in a :class:`TokenTrie`, following its growing output."""

    def __init__(self, trie: TokenTrie) -> None:
        self.trie = trie
        self.live: list[int] = []
        self.consumed = 0

    def follow(self, output: Sequence[int]) -> None:
        """Catch up with ``output`` (usually one new token since the last call)."""
        for token in output[self.consumed :]:
            self.live = self.trie.advance(self.live, token)
        self.consumed = len(output)

    def bans(self) -> list[int]:
        """Tokens that would complete a phrase now, besides :attr:`TokenTrie.root_bans`."""
        completing = self.trie.completing
        out: list[int] = []
        for state in self.live:
            out.extend(completing[state])
        return out
