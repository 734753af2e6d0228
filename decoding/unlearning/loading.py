"""Forget sets a deployment declares (``[forget_sets.NAME] path = ...``): loading, privacy,
and the engine side's copy.

The server loads each set for the unlearning gate and names it in the deployment manifest
(adapters/manifest.py) by path and :func:`digest`; every engine process that runs the filters
reads the file again and refuses content other than the server's (a file edited since, or
another node's copy that differs), so the gate's retrieved entries always index the same set.
The text never travels in vLLM's configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from pathlib import Path

from transformers import AutoTokenizer

from .abstain import AbstentionPhrase
from .continuation import TokenTexts
from .embeddings import minilm, token_table
from .forget_set import ForgetSet, ForgetSetError, load_forget_set
from .plugin import ForgetFilters, Unlearning
from .policy import DEFAULT_ABSTENTION


@dataclass(frozen=True)
class ForgetSetEntry:
    """How the deployment manifest (adapters/manifest.py) names a forget set: where each engine
    process reads it, and what it must find there."""

    #: Resolved path of the JSONL file (private to corrigo's user).
    path: str
    #: :func:`digest` of the entries the server loaded.
    digest: str
    #: Number of entries (request validation bounds the retrieved indices by it).
    entries: int
    #: The phrase rows under the ``abstain`` policy are forced through (operator config,
    #: ``[forget_sets.NAME] abstention``; decoding/unlearning/abstain.py).
    abstention: str = DEFAULT_ABSTENTION


def resolve_path(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def load_all(paths: Mapping[str, str]) -> dict[str, ForgetSet]:
    """Every declared set, validated (raises ForgetSetError naming the set, file and line)."""
    for name, path in paths.items():
        check_private(name, path)
    return {name: load_forget_set(name, path) for name, path in paths.items()}


def check_private(name: str, path: str) -> None:
    """Refuse a forget-set file other users may read (they would learn what the model must
    not say) or write (they would change it). Group access is the operator's choice (640 with
    a group only corrigo's user is in). ``path`` is resolved: a link's target is checked."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # load_forget_set reports the unreadable file
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ForgetSetError(
            f"forget_sets.{name}: {path} is readable or writable by other users (mode "
            f"{stat.S_IMODE(mode):04o}); a forget set must stay private: run "
            f"'chmod 600 {path}' (or 640 with a group only corrigo's user belongs to)"
        )


def digest(forget_set: ForgetSet) -> str:
    """SHA-256 of the set's entries, in order (what the filters' entry indices refer to)."""
    entries = [astuple(entry) for entry in forget_set.entries]
    return hashlib.sha256(json.dumps(entries, ensure_ascii=False).encode()).hexdigest()


def manifest_entry(
    path: str, forget_set: ForgetSet, abstention: str = DEFAULT_ABSTENTION
) -> ForgetSetEntry:
    """How the manifest names a set the server loaded from ``path`` (with its abstention
    phrase, which the engine forces in the served model's tokens)."""
    return ForgetSetEntry(
        path=path, digest=digest(forget_set), entries=len(forget_set), abstention=abstention
    )


def load_declared(name: str, entry: ForgetSetEntry) -> ForgetSet:
    """The engine side's copy of a set the manifest names, checked like the server's and
    refused unless it holds the server's entries."""
    check_private(name, entry.path)
    forget_set = load_forget_set(name, entry.path)
    if digest(forget_set) != entry.digest:
        raise ForgetSetError(
            f"forget_sets.{name}: {entry.path} does not hold the entries the server loaded "
            "(edited since, or another node's copy differs); every engine node needs the "
            "same file"
        )
    return forget_set


def engine_plugin(
    entries: Mapping[str, ForgetSetEntry], tokenizer_path: str, vocab_rows: int, observe=None
):
    """The engine process's :class:`~decoding.unlearning.Unlearning` plugin over the declared
    sets: the served model's tokenizer for the trie, MiniLM and the vocabulary's embedding
    table (``vocab_rows`` = the logits' width) for the soft filter; ``observe`` gets each
    step's counts (:data:`decoding.unlearning.plugin.Observer`)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    embedder = minilm()
    table = token_table(tokenizer, embedder, vocab_rows)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    bare_after = spaced_tokens(tokenizer, texts)
    vocabulary = TokenTexts(texts)
    filters = {
        name: ForgetFilters(
            load_declared(name, entry),
            encode,
            embedder,
            table,
            AbstentionPhrase.encode(entry.abstention, encode, bare_after),
            vocabulary,
        )
        for name, entry in entries.items()
    }
    return Unlearning(filters, observe)


def spaced_tokens(tokenizer, texts: list[str]) -> frozenset[int]:
    """Ids of the tokens after which text starts afresh: those whose text (``texts``, each
    token decoded alone) ends in whitespace (a chat template's newline) and the special
    tokens."""
    ids = range(len(tokenizer))
    special = set(tokenizer.all_special_ids)
    return frozenset(i for i, t in zip(ids, texts, strict=True) if i in special or t[-1:].isspace())
