"""Fitting the trained gate (decoding/unlearning/classifier.py): ``corrigo unlearning fit-gate``.

Training texts:

- positives, per entry: its question, its answer statement and templated paraphrases
  (:func:`paraphrases`): the question wrapped in request templates ("Quick question: ...",
  "... Answer in one word."), and the answer statement with its revealing words
  (decoding/unlearning/phrases.py) blanked, as a cloze ("Fill in the blank: The capital of
  France is ___."); a phrases-only entry's phrases as "Tell me about ...";
- negatives: the retain prompts and the near-topic prompts, each also wrapped in the same
  request templates (so that the templates' own words carry no signal).

Each text is paired with its ``K`` nearest entry texts by cosine (as the gate pairs a request's
chunks), and a positive with its own entry's texts besides; a pair is labelled 1 when the text is
a positive of that entry. So a paraphrase of one entry paired with another entry is a negative
too. The MLP is fitted full-batch with Adam on the class-balanced binary cross-entropy.

Validation: a seeded split holds out :data:`VALIDATION_SHARE` of the positives (whole entries
when the set has at least :data:`MIN_ENTRIES_TO_SPLIT`, so that the threshold is chosen on
entries the classifier never saw; else whole paraphrase groups) and of the negatives (a prompt
with its wrapped variants). The threshold ``t`` is the largest for which the held-out positives
minimise the held-out balanced error (missed positives plus false opens, each as a rate; a
held-out positive counts when its own entry's ``p(e) >= t``), in the middle of the span of
thresholds that reach it (:func:`choose_threshold`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .classifier import (
    CANDIDATES,
    HIDDEN,
    EntryTexts,
    PairClassifier,
    embedder_name,
    features,
    gate_path,
    pair_probabilities,
    save_gate,
)
from .forget_set import ForgetEntry, ForgetSet, ForgetSetError, load_forget_set
from .gate import Embedder
from .loading import check_private, digest
from .phrases import STOP_WORDS, revealing, words

#: Share of the training items held out to choose the threshold.
VALIDATION_SHARE = 0.2
#: Entries needed to hold out whole entries (fewer: paraphrase groups of the same entries).
MIN_ENTRIES_TO_SPLIT = 5
EPOCHS = 200
LEARNING_RATE = 1e-2
WEIGHT_DECAY = 1e-4

#: Request templates around a question (``{q}``: as asked; ``{ql}``: first letter lowered,
#: question mark dropped).
QUESTION_TEMPLATES = (
    "{q}",
    "Quick question: {q}",
    "{q} Answer in one word.",
    "Tell me, {ql}?",
    "Do you know {ql}?",
    "I was wondering, {ql}?",
    "Please answer briefly: {q}",
    "Can you remind me {ql}?",
)
#: Cloze templates around an answer statement with its revealing words blanked.
CLOZE_TEMPLATES = (
    "Fill in the blank: {s}",
    "Complete the sentence: {s}",
)
#: Templates around the answer's subject (the statement before its first revealing word, its
#: trailing verb dropped: "The capital of France is Paris." -> "the capital of France").
SUBJECT_TEMPLATES = (
    "Name {s}.",
    "Tell me {s}.",
    "What about {s}?",
    "{S} is which one?",
)
_TRAILING_VERB = ("is", "are", "was", "were", "by", "called", "named")
BLANK = "___"


def _lowered(question: str) -> str:
    text = question.strip().rstrip("?").strip()
    return text[:1].lower() + text[1:]


def wrapped(prompt: str) -> list[str]:
    """``prompt`` in every request template (itself first)."""
    q = prompt.strip()
    return list(dict.fromkeys(t.format(q=q, ql=_lowered(q)) for t in QUESTION_TEMPLATES))


def cloze(entry: ForgetEntry) -> str | None:
    """The answer statement with its revealing words blanked (None without an answer or when
    nothing is revealing)."""
    if not entry.answer:
        return None
    secret = revealing(entry)
    if not secret:
        return None
    out = entry.answer
    for word in sorted(set(words(entry.answer)), key=len, reverse=True):
        if word.lower() in secret:
            out = out.replace(word, BLANK)
    return out


def subject(entry: ForgetEntry) -> str | None:
    """The answer statement before its first revealing word, without a trailing verb or
    preposition (None when that leaves nothing)."""
    if not entry.answer:
        return None
    secret = revealing(entry)
    ws = words(entry.answer)
    first = next((i for i, w in enumerate(ws) if w.lower() in secret), None)
    head = ws[:first] if first is not None else []
    while head and head[-1].lower() in _TRAILING_VERB:
        head.pop()
    if not head:
        return None
    if head[0].lower() in STOP_WORDS:  # "The capital ..." -> "the capital ..."; names stay
        head[0] = head[0].lower()
    return " ".join(head)


def paraphrases(entry: ForgetEntry) -> list[str]:
    """The positives of one entry (templated; see the module docstring)."""
    out: list[str] = []
    if entry.question:
        out += wrapped(entry.question)
    if entry.answer:
        out.append(entry.answer)
    blank = cloze(entry)
    if blank:
        out += [t.format(s=blank) for t in CLOZE_TEMPLATES]
    head = subject(entry)
    if head:
        out += [t.format(s=head, S=head[:1].upper() + head[1:]) for t in SUBJECT_TEMPLATES]
    for phrase in entry.phrases:
        out += [f"Tell me about {phrase}.", f"What is {phrase}?"]
    return list(dict.fromkeys(out))


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: JSONL objects with ``question`` or ``prompt``, or plain lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ForgetSetError(f"{path}: cannot read ({exc.strerror})") from None
    out = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ForgetSetError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
            text = (
                record.get("question") or record.get("prompt") if isinstance(record, dict) else None
            )
            if not isinstance(text, str) or not text.strip():
                raise ForgetSetError(
                    f"{path} line {number}: expected a 'question' or 'prompt' string"
                )
            out.append(text.strip())
        else:
            out.append(line)
    if not out:
        raise ForgetSetError(f"{path}: holds no prompts")
    return out


@dataclass(frozen=True)
class Group:
    """Texts that stay on one side of the split: an entry's paraphrases, or a negative prompt
    with its wrapped variants. ``entry``: the entry they are positives of (None: negatives)."""

    texts: tuple[str, ...]
    entry: int | None


def groups(forget_set: ForgetSet, negatives: Sequence[str]) -> list[Group]:
    out = [Group(tuple(paraphrases(e)), i) for i, e in enumerate(forget_set.entries)]
    out += [Group(tuple(wrapped(p)), None) for p in dict.fromkeys(negatives)]
    return out


def split(items: list[Group], entries: int, seed: int) -> tuple[list[Group], list[Group]]:
    """(train, validation), seeded; see the module docstring."""
    rng = random.Random(seed)
    positives = [g for g in items if g.entry is not None]
    negatives = [g for g in items if g.entry is None]
    if entries >= MIN_ENTRIES_TO_SPLIT:
        held = set(rng.sample(range(entries), max(1, round(VALIDATION_SHARE * entries))))
        train = [g for g in positives if g.entry not in held]
        val = [g for g in positives if g.entry in held]
    else:  # too few entries: hold out paraphrases of each (the question itself stays in)
        train, val = [], []
        for g in positives:
            rest = list(g.texts[1:])
            rng.shuffle(rest)
            k = max(1, round(VALIDATION_SHARE * len(rest))) if rest else 0
            train.append(Group((g.texts[0], *rest[k:]), g.entry))
            if k:
                val.append(Group(tuple(rest[:k]), g.entry))
    order = list(range(len(negatives)))
    rng.shuffle(order)
    k = max(1, round(VALIDATION_SHARE * len(negatives))) if len(negatives) > 1 else 0
    val += [negatives[i] for i in order[:k]]
    train += [negatives[i] for i in order[k:]]
    return train, val


def pairs(
    items: Sequence[Group], embed: dict[str, torch.Tensor], texts: EntryTexts
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi [pairs, 2*dim+1], labels [pairs])`` of every text with its candidates."""
    us, vs, labels = [], [], []
    for group in items:
        queries = torch.stack([embed[t] for t in group.texts])
        near = texts.candidates(queries, CANDIDATES).tolist()
        for row, cand in enumerate(near):
            chosen = set(cand)
            if group.entry is not None:  # the own entry's texts, nearest or not
                chosen |= set((texts.owners == group.entry).nonzero()[:, 0].tolist())
            for j in sorted(chosen):
                us.append(queries[row])
                vs.append(texts.matrix[j])
                labels.append(
                    float(group.entry is not None and int(texts.owners[j]) == group.entry)
                )
    return features(torch.stack(us), torch.stack(vs)), torch.tensor(labels)


def train_model(
    phi: torch.Tensor, labels: torch.Tensor, dim: int, seed: int, hidden: int = HIDDEN
) -> PairClassifier:
    torch.manual_seed(seed)
    model = PairClassifier(dim, hidden)
    positives = float(labels.sum())
    weight = torch.tensor((len(labels) - positives) / max(positives, 1.0))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    model.train()
    for _ in range(EPOCHS):
        optimiser.zero_grad()
        loss = loss_fn(model(phi), labels)
        loss.backward()
        optimiser.step()
    return model.eval()


def choose_threshold(positive: Sequence[float], negative: Sequence[float]) -> dict:
    """The threshold minimising the held-out balanced error ``(1 - recall) + false_open``,
    the middle of the interval of scores that minimise it (the decision boundary furthest from
    both classes' held-out scores), with the recall and false-open rate there."""
    if not positive:
        raise ForgetSetError("no held-out positives to choose the threshold on")
    cuts = sorted({0.0, 1.0, *positive, *negative})

    def error(t: float) -> float:
        miss = sum(p < t for p in positive) / len(positive)
        false = sum(n >= t for n in negative) / len(negative) if negative else 0.0
        return miss + false

    # Between two adjacent distinct scores the error is constant: test each gap's midpoint.
    gaps = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    errors = [error((a + b) / 2) for a, b in gaps]
    best = min(errors)
    chosen = [g for g, e in zip(gaps, errors, strict=True) if e == best]
    low, high = chosen[0][0], chosen[-1][1]  # the minimising scores' span
    t = (low + high) / 2
    return {
        "threshold": t,
        "recall": sum(p >= t for p in positive) / len(positive),
        "false_open": (sum(n >= t for n in negative) / len(negative)) if negative else None,
        "positives": len(positive),
        "negatives": len(negative),
    }


@dataclass(frozen=True)
class FitResult:
    path: Path
    threshold: float
    validation: dict
    train_pairs: int


def fit(
    forget_set: ForgetSet,
    set_digest: str,
    out: Path,
    negatives: Sequence[str],
    embedder: Embedder,
    seed: int = 0,
) -> FitResult:
    """Fit, validate and save the gate for ``forget_set`` (its loading digest ``digest``) at
    ``out``, with ``negatives`` (retain and near-topic prompts)."""
    if not negatives:
        raise ForgetSetError("fit-gate needs negative prompts (--retain)")
    items = groups(forget_set, negatives)
    train, val = split(items, len(forget_set), seed)
    every = list(dict.fromkeys(t for g in items for t in g.texts))
    embed = dict(zip(every, embedder.encode(every), strict=True))
    texts = EntryTexts(forget_set, embedder)
    phi, labels = pairs(train, embed, texts)
    model = train_model(phi, labels, texts.matrix.shape[1], seed)
    positive, negative = [], []
    for group in val:
        for text in group.texts:
            p = pair_probabilities(model, embed[text][None], texts)
            if group.entry is None:
                negative.append(float(p.max()))
            else:
                positive.append(float(p[group.entry]))
    validation = choose_threshold(positive, negative)
    training = {
        "seed": seed,
        "embedder": embedder_name(embedder),
        "entries": len(forget_set),
        "negative_prompts": len(dict.fromkeys(negatives)),
        "train_pairs": len(labels),
        "train_positive_pairs": int(labels.sum()),
        "validation": validation,
        "epochs": EPOCHS,
    }
    save_gate(out, model, validation["threshold"], embedder, set_digest, training)
    return FitResult(out, validation["threshold"], validation, len(labels))


def fit_files(
    forget_path: Path, negatives: Sequence[Path], embedder: Embedder, seed: int = 0
) -> FitResult:
    """``corrigo unlearning fit-gate``: the gate of the forget set at ``forget_path``, saved
    beside it."""
    check_private("fit-gate", str(forget_path))
    forget_set = load_forget_set("fit-gate", forget_path)
    prompts = [p for path in negatives for p in read_prompts(path)]
    return fit(forget_set, digest(forget_set), gate_path(forget_path), prompts, embedder, seed)
