"""The refinement eval's generated suites, written by a seeded script (this module).

``python -m evals.refinement_suites`` writes ``evals/suites/refinement/multi_constraint.jsonl``
and ``arithmetic_generated.jsonl``; a unit test checks that the shipped files are what it writes.

- ``multi_constraint``: write about a topic under 2-4 checkable constraints, drawn from distinct
  groups (:data:`GROUPS`) so that no two contradict. Each constraint has a pure Python checker
  (:func:`check`) and an exact ``regex`` verifier spec (:func:`truth_spec`); the item's truth is
  their ``all`` combination (accepted only when every constraint holds). A unit test checks that
  the two agree.
- ``arithmetic_generated``: "What is a op b?" with 2-digit sums and differences and 1-digit
  products; truth: the ``answer`` verifier, numeric.

Item counts are :data:`ITEMS` (>= 60, so one item weighs under 2 points of a pass rate).
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

SUITES_DIR = Path(__file__).parent / "suites" / "refinement"
#: Items per generated suite.
ITEMS = 60
#: The generator's seed (fixed: the shipped suites are what it writes).
SEED = 15

ConstraintKind = Literal[
    "lowercase",
    "no_commas",
    "include_word",
    "end_word",
    "end_exclamation",
    "start_word",
    "max_words",
    "min_words",
    "include_digit",
]
CONSTRAINT_KINDS: tuple[str, ...] = get_args(ConstraintKind)

#: Constraints of one group may contradict each other (two endings, two length bounds), so an
#: item draws at most one constraint per group.
GROUPS: tuple[tuple[str, ...], ...] = (
    ("lowercase",),
    ("no_commas",),
    ("include_word",),
    ("end_word", "end_exclamation"),
    ("start_word",),
    ("max_words", "min_words"),
    ("include_digit",),
)

TOPICS = (
    "the sea", "autumn", "a cat", "a city at night", "coffee", "a library", "rain",
    "a mountain", "a train journey", "a garden", "winter", "a market", "the moon", "a river",
    "a bicycle", "friendship", "a storm", "bread", "a forest", "music",
)  # fmt: skip
WORDS = (
    "blue", "quiet", "river", "stone", "green", "light", "window", "morning", "silver",
    "paper", "warm", "golden", "small", "old", "bright",
)  # fmt: skip
START_WORDS = ("Today", "Sometimes", "Every", "Here", "Yesterday", "Once")

_PUNCT = "\"'*.,!?;:()[]"


@dataclass(frozen=True)
class Constraint:
    """One checkable constraint: its kind and argument (a word or a count; "" when none)."""

    kind: ConstraintKind
    arg: str = ""

    def instruction(self) -> str:
        """The sentence that states it in the prompt."""
        a = self.arg
        return {
            "lowercase": "Use only lowercase letters.",
            "no_commas": "Do not use any commas.",
            "include_word": f'Include the word "{a}".',
            "end_word": f'End your reply with the word "{a}".',
            "end_exclamation": "End your reply with an exclamation mark.",
            "start_word": f'Start your reply with the word "{a}".',
            "max_words": f"Use at most {a} words.",
            "min_words": f"Use at least {a} words.",
            "include_digit": "Include at least one number written in digits.",
        }[self.kind]


def _words(text: str) -> list[str]:
    return text.split()


def check(constraint: Constraint, text: str) -> bool:
    """Whether ``text`` meets ``constraint`` (pure Python; the exact truth's twin).

    Words are whitespace-separated tokens; a word matches ignoring case and the surrounding
    punctuation in :data:`_PUNCT`; ``end_word`` allows trailing punctuation and spaces."""
    a = constraint.arg
    words = _words(text)
    bare = [w.strip(_PUNCT).lower() for w in words]
    checks: dict[str, Callable[[], bool]] = {
        "lowercase": lambda: bool(text.strip()) and not any("A" <= c <= "Z" for c in text),
        "no_commas": lambda: "," not in text,
        "include_word": lambda: _word_bounded(text.lower(), a.lower()),
        "end_word": lambda: bool(bare) and _ends_with_word(text, a),
        "end_exclamation": lambda: text.rstrip().endswith("!"),
        "start_word": lambda: bool(bare) and _starts_with_word(text, a),
        "max_words": lambda: 1 <= len(words) <= int(a),
        "min_words": lambda: len(words) >= int(a),
        "include_digit": lambda: any("0" <= c <= "9" for c in text),
    }
    return checks[constraint.kind]()


def _word_bounded(text: str, word: str) -> bool:
    """The regex's ``\\bWORD\\b``: ``word`` with no ASCII word character on either side."""
    start = text.find(word)
    while start != -1:
        end = start + len(word)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not _is_word_char(before) and not _is_word_char(after):
            return True
        start = text.find(word, start + 1)
    return False


def _is_word_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def _ends_with_word(text: str, word: str) -> bool:
    body = text.rstrip(" \t\n\r" + ".!?\"'*")
    if not body.lower().endswith(word.lower()):
        return False
    before = body[: len(body) - len(word)]
    return not before or not _is_word_char(before[-1])


def _starts_with_word(text: str, word: str) -> bool:
    body = text.lstrip(" \t\n\r\"'*")
    if not body.lower().startswith(word.lower()):
        return False
    after = body[len(word) :]
    return not after or not _is_word_char(after[0])


def truth_spec(constraint: Constraint) -> dict[str, Any]:
    """The exact ``regex`` verifier spec equivalent to :func:`check`."""
    a = re.escape(constraint.arg)
    n = int(constraint.arg) if constraint.kind in ("max_words", "min_words") else 0
    pattern, full = {
        "lowercase": (r"[^A-Z]*[^A-Z\s][^A-Z]*", True),
        "no_commas": (r"[^,]*", True),
        "include_word": (rf"(?i)\b{a}\b", False),
        "end_word": (rf"(?i)\b{a}[\s.!?\"'*]*$", False),
        "end_exclamation": (r"!\s*$", False),
        "start_word": (rf"(?i)^[\s\"'*]*{a}\b", False),
        "max_words": (rf"\S+(?:\s+\S+){{0,{max(n - 1, 0)}}}", True),
        "min_words": (rf"\S+(?:\s+\S+){{{max(n - 1, 0)},}}", True),
        "include_digit": (r"[0-9]", False),
    }[constraint.kind]
    spec: dict[str, Any] = {"type": "regex", "pattern": pattern}
    if full:
        spec["full_match"] = True
    return spec


def _draw_constraint(kind: str, rng: random.Random, used_words: set[str]) -> Constraint:
    if kind in ("include_word", "end_word"):
        word = rng.choice([w for w in WORDS if w not in used_words])
        used_words.add(word)
        return Constraint(kind, word)  # type: ignore[arg-type]
    if kind == "start_word":
        return Constraint(kind, rng.choice(START_WORDS))
    if kind == "max_words":
        return Constraint(kind, str(rng.choice((10, 12, 15, 20))))
    if kind == "min_words":
        return Constraint(kind, str(rng.choice((8, 10, 12))))
    return Constraint(kind)  # type: ignore[arg-type]


def draw_constraints(rng: random.Random) -> list[Constraint]:
    """2-4 constraints from distinct groups; ``start_word`` never with ``lowercase`` (the
    start words are capitalised)."""
    while True:
        groups = rng.sample(GROUPS, rng.randint(2, 4))
        kinds = [rng.choice(g) for g in groups]
        if not ("start_word" in kinds and "lowercase" in kinds):
            break
    used: set[str] = set()
    return [_draw_constraint(k, rng, used) for k in kinds]


def multi_constraint_item(index: int, rng: random.Random) -> dict[str, Any]:
    topic = rng.choice(TOPICS)
    constraints = draw_constraints(rng)
    rules = " ".join(c.instruction() for c in constraints)
    return {
        "id": f"mc-{index:02d}",
        "prompt": f"Write about {topic}. {rules}",
        "constraints": [{"kind": c.kind, "arg": c.arg} for c in constraints],
        "verifier": {"all": [truth_spec(c) for c in constraints]},
    }


def arithmetic_item(index: int, rng: random.Random) -> dict[str, Any]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and b > a:
            a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {
        "id": f"ag-{index:02d}",
        "prompt": f"What is {a} {op} {b}? Reply with only the number.",
        "verifier": {"type": "answer", "reference": value, "mode": "numeric"},
    }


GENERATORS: dict[str, Callable[[int, random.Random], dict[str, Any]]] = {
    "multi_constraint": multi_constraint_item,
    "arithmetic_generated": arithmetic_item,
}


def generate(suite: str, n: int = ITEMS, seed: int = SEED) -> list[dict[str, Any]]:
    """The suite's ``n`` items, the same for the same ``seed``."""
    rng = random.Random(f"{suite}:{seed}")
    return [GENERATORS[suite](i, rng) for i in range(n)]


def constraints_of(item: dict[str, Any]) -> list[Constraint]:
    return [Constraint(c["kind"], c["arg"]) for c in item["constraints"]]


def write(folder: Path = SUITES_DIR, suites: Sequence[str] = tuple(GENERATORS)) -> list[Path]:
    paths = []
    for suite in suites:
        path = folder / f"{suite}.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in generate(suite)))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SUITES_DIR):
        print(written)
