"""Writes the copilot task's splits (``train.jsonl``, ``heldout.jsonl``) beside this file.

Short product reviews, one-word sentiment labels. SmolLM2-135M-Instruct makes a systematic
mistake here: for many negative reviews it answers "The review is a positive one" instead of
the one word asked for. Run ``python evals/suites/copilot/make.py`` to regenerate (deterministic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

QUESTION = (
    "Classify the sentiment of this review as Positive or Negative. Reply with one word.\n"
    "Review: {review}"
)
SUBJECTS = [
    "soup",
    "pasta",
    "hotel room",
    "film",
    "phone",
    "laptop",
    "service",
    "staff",
    "concert",
    "book",
    "coffee",
    "pizza",
    "flight",
    "car",
    "camera",
    "headphones",
    "game",
    "museum",
    "tour",
    "show",
    "bread",
    "salad",
    "keyboard",
    "printer",
    "jacket",
    "shoes",
    "app",
    "website",
    "course",
    "lecture",
    "hike",
    "beach",
    "train ride",
    "dessert",
    "wine",
    "tea",
]
POSITIVE = [
    "delicious",
    "fantastic",
    "wonderful",
    "excellent",
    "amazing",
    "great",
    "superb",
    "lovely",
    "brilliant",
    "perfect",
    "delightful",
    "outstanding",
    "charming",
    "impressive",
]
NEGATIVE = [
    "awful",
    "terrible",
    "boring",
    "horrible",
    "disappointing",
    "bad",
    "dreadful",
    "poor",
    "annoying",
    "useless",
    "rude",
    "disgusting",
    "broken",
    "mediocre",
]
TEMPLATES = ["The {s} was {a}.", "Honestly, the {s} is {a}.", "I found the {s} {a}."]


def items() -> list[dict[str, str]]:
    rng = random.Random(0)
    out = []
    for subject in SUBJECTS:
        for label, words in (("Positive", POSITIVE), ("Negative", NEGATIVE)):
            for word in rng.sample(words, 4):
                review = rng.choice(TEMPLATES).format(s=subject, a=word)
                out.append({"prompt": QUESTION.format(review=review), "response": label})
    rng.shuffle(out)
    return out


def main() -> None:
    data = items()
    held = len(data) // 3
    folder = Path(__file__).parent
    for name, split in (("heldout", data[:held]), ("train", data[held:])):
        with (folder / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(item) + "\n" for item in split)


if __name__ == "__main__":
    main()
