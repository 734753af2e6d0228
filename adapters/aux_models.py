"""Auxiliary models a deployment declares (``[aux_models.NAME] path = ...``): resolution,
tokenizer compatibility with the served model, and hand-over to the engine process.

Logits processors run in vLLM's engine-core process, which corrigo does not construct; the
declarations reach it through an environment variable the spawned process inherits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .default_model import ensure_default_model

#: Environment variable carrying ``{name: path}`` to the engine process. Not ``CORRIGO_*``:
#: it is internal, not a setting.
ENGINE_ENV = "_CORRIGO_AUX_MODELS"
#: ``path`` value naming the embedded default model's converted folder.
EMBEDDED = "embedded"


class AuxModelError(ValueError):
    """An auxiliary model that cannot serve beside the base model; the message says why."""


def resolve_path(path: str) -> str:
    if path == EMBEDDED:
        return str(ensure_default_model())
    return str(Path(path).expanduser().resolve())


def check_compatible(name: str, aux_path: str, base_path: str) -> None:
    """Refuse an auxiliary model whose tokenizer differs from the base's. An auxiliary model
    may have more (trailing) vocabulary rows than the base; they are truncated per step."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        aux_tok = AutoTokenizer.from_pretrained(aux_path)
        aux_config = AutoConfig.from_pretrained(aux_path)
    except (OSError, ValueError) as exc:
        raise AuxModelError(f"aux_models.{name}: cannot load {aux_path}: {exc}") from None
    base_tok = AutoTokenizer.from_pretrained(base_path)
    base_config = AutoConfig.from_pretrained(base_path)
    if aux_tok.get_vocab() != base_tok.get_vocab():
        raise AuxModelError(
            f"aux_models.{name}: its tokenizer differs from the served model's "
            f"({len(aux_tok)} vs {len(base_tok)} tokens); proxy-tuning and copilots need the "
            "same tokenizer"
        )
    if aux_config.vocab_size < base_config.vocab_size:
        raise AuxModelError(
            f"aux_models.{name}: vocabulary of {aux_config.vocab_size} rows is smaller than the "
            f"served model's {base_config.vocab_size}"
        )


def publish(aux_models: Mapping[str, str]) -> None:
    """Make the declarations visible to the engine process (started after this call)."""
    os.environ[ENGINE_ENV] = json.dumps(dict(aux_models))


def published() -> dict[str, str]:
    return json.loads(os.environ.get(ENGINE_ENV, "{}"))
