"""Forget sets: what a deployment asks the model not to reveal.

A forget set is a JSONL file declared in the config (``[forget_sets.NAME] path = ...``). Each
line is one entry: ``{"question": ..., "answer": ...}``, ``{"phrases": [...]}``, or both. The
gate compares a request's text with the entries' questions and answers; the filters forbid the
phrases of the entries the gate retrieved. The content stays server-side: nothing here is ever
put into a response or a log message (errors name the file and line, never the text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ForgetSetError(ValueError):
    """A forget-set file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class ForgetEntry:
    question: str | None = None
    answer: str | None = None
    #: Phrases forbidden whenever this entry is retrieved, besides those of the answer.
    phrases: tuple[str, ...] = ()

    @property
    def gate_texts(self) -> tuple[str, ...]:
        """The texts a request is compared with: question and answer, or (for a phrases-only
        entry) its phrases as one text."""
        texts = tuple(t for t in (self.question, self.answer) if t)
        return texts or (", ".join(self.phrases),)


@dataclass(frozen=True)
class ForgetSet:
    name: str
    entries: tuple[ForgetEntry, ...]

    def __len__(self) -> int:
        return len(self.entries)


def parse_entry(record: object, where: str) -> ForgetEntry:
    if not isinstance(record, dict):
        raise ForgetSetError(f"{where}: expected a JSON object")
    unknown = set(record) - {"question", "answer", "phrases"}
    if unknown:
        raise ForgetSetError(
            f"{where}: unknown keys {sorted(unknown)} (expected question, answer, phrases)"
        )
    question, answer = record.get("question"), record.get("answer")
    phrases = record.get("phrases", [])
    for key, value in (("question", question), ("answer", answer)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ForgetSetError(f"{where}: '{key}' must be a non-empty string")
    if not isinstance(phrases, list) or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise ForgetSetError(f"{where}: 'phrases' must be a list of non-empty strings")
    if answer is None and not phrases:
        raise ForgetSetError(f"{where}: an entry needs an 'answer' or 'phrases'")
    return ForgetEntry(question, answer, tuple(p.strip() for p in phrases))


def load_forget_set(name: str, path: str | Path) -> ForgetSet:
    """Read and validate a forget-set file (blank lines are skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ForgetSetError(f"forget_sets.{name}: cannot read {path}: {exc.strerror}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"forget_sets.{name}: {path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ForgetSetError(f"{where}: not valid JSON ({exc.msg})") from None
        entries.append(parse_entry(record, where))
    if not entries:
        raise ForgetSetError(f"forget_sets.{name}: {path} holds no entries")
    return ForgetSet(name, tuple(entries))
