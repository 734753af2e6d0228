"""The copilot eval's task: two-step integer arithmetic, generated from a seed.

Each item chains two operations on small integers, ``((a o1 b) o2 c)`` with ``a, b`` two-digit,
``o1`` in ``+ -`` and ``o2`` either ``+ -`` with a two-digit ``c`` or ``*`` with a one-digit
``c``, and the response works it step by step::

    prompt:   Compute (47 - 18) * 6. Work it out step by step.
    response: 47 - 18 = 29. 29 * 6 = 174. Answer: 174

A 135M pilot fine-tuned on a few hundred of these learns the format but not the carries and
products, so plain fine-tuning does not saturate it (docs/evals/copilot.md), and every
intermediate digit is a token the copilot may correct. Splits are disjoint by prompt.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

#: Items per split in the shipped eval (``corrigo eval copilot`` may ask for fewer).
SPLIT_SIZES = {"train": 160, "val": 60, "test": 150}
#: The answer is the integer after "Answer:", else the last integer of the text.
ANSWER = re.compile(r"Answer:\s*(-?\d+)")
INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Item:
    prompt: str
    response: str
    answer: int


def make_item(rng: random.Random) -> Item:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    first = rng.choice("+-")
    step1 = a + b if first == "+" else a - b
    second = rng.choice("+-*")
    c = rng.randint(2, 9) if second == "*" else rng.randint(10, 99)
    step2 = {"+": step1 + c, "-": step1 - c, "*": step1 * c}[second]
    return Item(
        f"Compute ({a} {first} {b}) {second} {c}. Work it out step by step.",
        f"{a} {first} {b} = {step1}. {step1} {second} {c} = {step2}. Answer: {step2}",
        step2,
    )


def splits(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[Item]]:
    """``{"train", "val", "test"}`` -> items, deterministic in ``seed``, no prompt in two
    splits."""
    sizes = sizes or SPLIT_SIZES
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[Item]] = {}
    for name in ("train", "val", "test"):
        items: list[Item] = []
        while len(items) < sizes[name]:
            item = make_item(rng)
            if item.prompt not in seen:
                seen.add(item.prompt)
                items.append(item)
        out[name] = items
    return out


def parse_answer(text: str) -> int | None:
    """The integer after "Answer:", else the text's last integer, else ``None``."""
    match = ANSWER.search(text)
    if match:
        return int(match.group(1))
    numbers = INTEGER.findall(text)
    return int(numbers[-1]) if numbers else None


def is_right(text: str, item: Item) -> bool:
    return parse_answer(text) == item.answer
