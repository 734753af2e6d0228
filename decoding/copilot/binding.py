"""A copilot's binding to the pilot it was trained on.

A copilot learns one pilot's mistakes, token by token: served beside another model (or the
same architecture with other weights' config, or another tokenizer) its rectifications are
noise. The checkpoint records what it is bound to and the server refuses any other pilot.

- ``vocab_hash``: SHA-256 of the pilot tokenizer's ``{token: id}`` map (sorted JSON), so ids
  mean the same tokens;
- ``config_hash``: SHA-256 of the pilot's model config (sorted JSON) without the keys that
  say where or how it was saved (:data:`VOLATILE_CONFIG_KEYS`), so the architecture and its
  sizes match. Weights themselves are not hashed (reading them all at start-up costs seconds
  per GB); ``pilot`` records the name or path they came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .fusion import SPACES

#: Model-config keys that change with how a model is saved or loaded, not what it is.
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "architectures",
        "_commit_hash",
    }
)


class BindingError(ValueError):
    """A copilot served beside a pilot it was not trained on; the message says what differs."""


def _sha256(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def vocab_hash(vocab: Mapping[str, int]) -> str:
    return _sha256(dict(vocab))


def config_hash(config: Mapping[str, Any]) -> str:
    return _sha256({k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS})


@dataclass(frozen=True)
class Binding:
    """What a copilot checkpoint is bound to, and its defaults for requests."""

    pilot: str
    vocab_hash: str
    config_hash: str
    space: str = "logits"
    default_lambda: float = 1.0

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"binding space must be one of {SPACES}, got {self.space!r}")

    @classmethod
    def of(
        cls,
        pilot: str,
        vocab: Mapping[str, int],
        config: Mapping[str, Any],
        *,
        space: str = "logits",
        default_lambda: float = 1.0,
    ) -> Binding:
        return cls(pilot, vocab_hash(vocab), config_hash(config), space, default_lambda)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Binding:
        return cls(**data)

    def check(self, pilot: str, vocab: Mapping[str, int], config: Mapping[str, Any]) -> None:
        """Raise :class:`BindingError` unless ``pilot`` (vocabulary, config) is the pilot this
        copilot was trained on."""
        if vocab_hash(vocab) != self.vocab_hash:
            raise BindingError(
                f"it was trained on pilot '{self.pilot}', whose tokenizer differs from that of "
                f"'{pilot}' (vocabulary hash mismatch); train a copilot for this model with "
                "`corrigo copilot train --pilot ...`"
            )
        if config_hash(config) != self.config_hash:
            raise BindingError(
                f"it was trained on pilot '{self.pilot}', whose model config differs from that "
                f"of '{pilot}' (config hash mismatch); train a copilot for this model with "
                "`corrigo copilot train --pilot ...`"
            )
