"""Forbidden phrases of retrieved forget-set entries (GUARD's extraction).

The phrases of an entry are every word n-gram (n = 1..5) of its answer that contains a
*revealing* word, plus its explicit phrases. A word reveals something unless it is a stop word
(a function word whose ban would cripple any answer: "the", "is", "of") or a word of the entry's
own question: for "What is the capital of France?" -> "The capital of France is Paris." the
secret is "Paris"; "capital" and "France" are the question's context, and banning them would
also block harmless answers (the capital of Germany). Words keep their punctuation-free form;
case variants are the trie's business (:mod:`.trie`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .forget_set import ForgetEntry

MAX_NGRAM = 5

# Function words only: banning them alone reveals nothing and breaks fluent text.
STOP_WORDS: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "if",
        "then",
        "than",
        "as",
        "of",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "on",
        "onto",
        "to",
        "with",
        "without",
        "about",
        "above",
        "below",
        "over",
        "under",
        "up",
        "down",
        "out",
        "off",
        "via",
        "per",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "having",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "it",
        "its",
        "it's",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "i",
        "me",
        "my",
        "we",
        "us",
        "our",
        "you",
        "your",
        "he",
        "him",
        "his",
        "she",
        "her",
        "they",
        "them",
        "their",
        "who",
        "whom",
        "whose",
        "which",
        "what",
        "when",
        "where",
        "why",
        "how",
        "not",
        "no",
        "yes",
        "also",
        "too",
        "very",
        "just",
        "only",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "own",
        "same",
        "s",
        "t",
    ]
)

_WORD = re.compile(r"[^\W_]+(?:['’.-][^\W_]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``, punctuation stripped ("Paris." -> "Paris", "U.S" kept whole)."""
    return _WORD.findall(text)


def revealing(entry: ForgetEntry) -> set[str]:
    """The answer's words (case-folded) that are neither stop words nor words of the question."""
    context = {w.lower() for w in words(entry.question or "")}
    return {w.lower() for w in words(entry.answer or "")} - STOP_WORDS - context


def answer_ngrams(entry: ForgetEntry, max_n: int = MAX_NGRAM) -> list[str]:
    """Word n-grams (1..max_n) of the entry's answer that contain a revealing word, in order of
    first appearance, without duplicates."""
    ws = words(entry.answer or "")
    secret = revealing(entry)
    seen: dict[str, None] = {}
    for n in range(1, max_n + 1):
        for start in range(len(ws) - n + 1):
            gram = ws[start : start + n]
            if any(w.lower() in secret for w in gram):
                seen.setdefault(" ".join(gram), None)
    return list(seen)


def forbidden_phrases(entries: Iterable[ForgetEntry]) -> list[str]:
    """Every phrase the retrieved ``entries`` forbid, without duplicates."""
    seen: dict[str, None] = {}
    for entry in entries:
        for phrase in (*answer_ngrams(entry), *entry.phrases):
            seen.setdefault(phrase, None)
    return list(seen)


def semantic_words(entries: Iterable[ForgetEntry]) -> list[str]:
    """What the soft filter compares candidates with: the answers' revealing words (explicit
    phrases are matched exactly by the trie only, so that 10^4 of them stay cheap)."""
    seen: dict[str, None] = {}
    for entry in entries:
        for word in words(entry.answer or ""):
            if word.lower() in revealing(entry):
                seen.setdefault(word.lower(), None)
    return list(seen)
