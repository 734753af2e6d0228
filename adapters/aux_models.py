"""Auxiliary models a deployment declares (``[aux_models.NAME] path = ...``): resolution and
tokenizer compatibility with the served model, checked by the server at start-up. The engine
side learns of them from the deployment manifest (adapters/manifest.py)."""

from __future__ import annotations

from pathlib import Path

from .default_model import ensure_default_model

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
