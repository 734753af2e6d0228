"""The trained gate (decoding/unlearning/classifier.py, fit_gate.py) on a bag-of-words
embedder: fitting, the file's bindings (embedder, entries, version), the decision."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import pytest
import torch

from decoding.unlearning import ForgetEntry, ForgetSet, ForgetSetError
from decoding.unlearning.classifier import (
    FORMAT,
    TrainedGate,
    gate_path,
    load_gate,
)
from decoding.unlearning.fit_gate import choose_threshold, fit, groups, paraphrases, split
from decoding.unlearning.gate import chunks
from decoding.unlearning.loading import digest


class BagOfWords:
    """Unit-norm hashed bag of words: deterministic and quick, with a name and a ``salt`` that
    makes another embedder of the same name."""

    dim = 64

    def __init__(self, name: str = "bag-of-words", salt: str = "") -> None:
        self.name = name
        self.salt = salt

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int(hashlib.sha256((self.salt + word).encode()).hexdigest(), 16)
                out[row, h % self.dim] += 1.0
        return torch.nn.functional.normalize(out + 1e-6, dim=-1)


SET = ForgetSet(
    "capitals",
    tuple(
        ForgetEntry(f"What is the capital of {c}?", f"The capital of {c} is {city}.")
        for c, city in [
            ("France", "Paris"),
            ("Japan", "Tokyo"),
            ("Italy", "Rome"),
            ("Egypt", "Cairo"),
            ("Peru", "Lima"),
            ("Kenya", "Nairobi"),
        ]
    ),
)
NEGATIVES = [
    "What is the capital of Germany?",
    "What is the capital of Spain?",
    "What language is spoken in France?",
    "What is the currency of Japan?",
    "How do I boil an egg?",
    "Write a poem about the sea.",
    "Which river flows through Egypt?",
    "What is the capital of Chile?",
    "Who painted the Mona Lisa?",
    "What is the tallest mountain in Kenya?",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "capitals.jsonl.gate.pt"
    result = fit(SET, digest(SET), path, NEGATIVES, BagOfWords(), seed=0)
    return result


def test_fit_writes_an_owner_only_file_with_its_validation(fitted):
    assert fitted.path.stat().st_mode & 0o077 == 0
    v = fitted.validation
    assert 0.0 <= fitted.threshold <= 1.0 and v["positives"] > 0 and v["negatives"] > 0
    assert torch.load(fitted.path, weights_only=True)["format"] == FORMAT


def test_the_same_embedder_loads_it_and_it_decides(fitted):
    gate = load_gate(fitted.path, SET, BagOfWords(), digest(SET))
    assert isinstance(gate, TrainedGate) and gate.threshold == fitted.threshold
    asked = gate.decide_chunks(chunks(["Quick question: what is the capital of Peru?"]))
    assert asked.gate == "classifier" and asked.opened and 4 in asked.targets
    assert not gate.decide_chunks(chunks(["How do I boil an egg?"])).opened


def test_fitting_is_seeded(fitted, tmp_path):
    again = fit(SET, digest(SET), tmp_path / "again.pt", NEGATIVES, BagOfWords(), seed=0)
    assert again.threshold == fitted.threshold


def test_another_embedder_name_is_refused(fitted):
    with pytest.raises(ForgetSetError, match="fitted on embeddings of bag-of-words"):
        load_gate(fitted.path, SET, BagOfWords(name="other-encoder"), digest(SET))


def test_the_same_name_with_other_weights_is_refused(fitted):
    with pytest.raises(ForgetSetError, match="another embedder's vectors"):
        load_gate(fitted.path, SET, BagOfWords(salt="retrained"), digest(SET))


def test_edited_entries_are_refused(fitted):
    edited = ForgetSet("capitals", SET.entries[:-1])
    with pytest.raises(ForgetSetError, match="other entries"):
        load_gate(fitted.path, edited, BagOfWords(), digest(edited))


def test_another_version_or_a_foreign_file_is_refused(fitted, tmp_path):
    payload = torch.load(fitted.path, weights_only=True)
    torch.save({**payload, "version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ForgetSetError, match="version 99"):
        load_gate(tmp_path / "v99.pt", SET, BagOfWords(), digest(SET))
    (tmp_path / "junk.pt").write_bytes(b"not a gate")
    with pytest.raises(ForgetSetError, match="not a readable gate file"):
        load_gate(tmp_path / "junk.pt", SET, BagOfWords(), digest(SET))


def test_the_gate_file_sits_beside_the_forget_set(tmp_path):
    assert gate_path(tmp_path / "set.jsonl") == tmp_path / "set.jsonl.gate.pt"


def test_paraphrases_are_templated_from_question_and_answer():
    texts = paraphrases(SET.entries[0])
    assert "Quick question: What is the capital of France?" in texts
    assert "Fill in the blank: The capital of France is ___." in texts
    assert "Name the capital of France." in texts
    assert all("Paris" not in t for t in texts if t != SET.entries[0].answer)


def test_the_split_holds_out_whole_entries_and_whole_negative_prompts():
    train, val = split(groups(SET, NEGATIVES), len(SET), seed=0)
    held = {g.entry for g in val if g.entry is not None}
    assert held and not held & {g.entry for g in train if g.entry is not None}
    assert not {t for g in val for t in g.texts} & {t for g in train for t in g.texts}


def test_the_threshold_is_the_middle_of_the_span_that_separates_the_held_out_scores():
    chosen = choose_threshold([0.9, 0.8, 0.95], [0.1, 0.3, 0.2])
    assert chosen["threshold"] == pytest.approx(0.55)
    assert chosen["recall"] == 1.0 and chosen["false_open"] == 0.0
