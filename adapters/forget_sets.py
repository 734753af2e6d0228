"""Forget sets a deployment declares (``[forget_sets.NAME] path = ...``): loading, and the
hand-over to the engine process, which loads them once more for the filters.

Like auxiliary models (adapters/aux_models.py), the declarations reach vLLM's engine-core
process through an environment variable it inherits; only names and paths travel, never the
content.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from decoding.unlearning import ForgetSet, ForgetSetError, load_forget_set

#: Environment variable carrying ``{name: path}`` to the engine process (internal).
ENGINE_ENV = "_CORRIGO_FORGET_SETS"


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


def publish(paths: Mapping[str, str]) -> None:
    """Make the declarations visible to the engine process (started after this call)."""
    os.environ[ENGINE_ENV] = json.dumps(dict(paths))


def published() -> dict[str, str]:
    return json.loads(os.environ.get(ENGINE_ENV, "{}"))


@cache
def sizes() -> dict[str, int]:
    """``{name: number of entries}`` of the published sets (loaded once per process): what
    request validation needs to know in the front end and the engine."""
    return {name: len(s) for name, s in load_all(published()).items()}


def engine_plugin(tokenizer_path: str, vocab_rows: int, observe=None):
    """The engine process's :class:`~decoding.unlearning.Unlearning` plugin over the published
    sets: the served model's tokenizer for the trie, MiniLM and the vocabulary's embedding
    table (``vocab_rows`` = the logits' width) for the soft filter; ``observe`` gets each
    step's counts (:data:`decoding.unlearning.plugin.Observer`)."""
    from transformers import AutoTokenizer

    from decoding.unlearning import ForgetFilters, Unlearning

    from .embeddings import minilm, token_table

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    embedder = minilm()
    table = token_table(tokenizer, embedder, vocab_rows)
    filters = {
        name: ForgetFilters(forget_set, encode, embedder, table)
        for name, forget_set in load_all(published()).items()
    }
    return Unlearning(filters, observe)
