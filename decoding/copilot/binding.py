"""A copilot's binding to the pilot it was trained on.

A copilot learns one pilot's mistakes, token by token: served beside another model (or the
same architecture with other weights' config, or another tokenizer) its rectifications are
noise. The checkpoint records what it is bound to and the server refuses any other pilot.

- ``vocab_hash``: SHA-256 of the pilot tokenizer's ``{token: id}`` map (sorted JSON), so ids
  mean the same tokens;
- ``config_hash``: SHA-256 of the pilot's model config (sorted JSON) without the keys that
  say where or how it was saved (:data:`VOLATILE_CONFIG_KEYS`), so the architecture and its
  sizes match;
- ``weights_hash``: :func:`weights_fingerprint` of the pilot's safetensors files, so a
  fine-tuned pilot (same vocabulary and config, other weights) and the model it was tuned
  from are told apart: a copilot trained jointly with a fine-tuned pilot
  (adapters/copilot_joint.py) learned that pilot's mistakes, not the original's. Reading
  every weight at start-up costs seconds per GB, so the fingerprint samples them (below).
  Checkpoints written before it existed carry ``None`` and are checked on vocabulary and
  config only. ``pilot`` records the name or path the weights came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
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


#: Blocks sampled per weights file by :func:`weights_fingerprint`, and their size in bytes.
FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK_BYTES = 256, 4096


def weights_fingerprint(folder: str | Path) -> str | None:
    """SHA-256 over the pilot folder's ``*.safetensors`` files (sorted by name): each file's
    name, size and header (tensor names, dtypes, shapes, offsets), then ``B`` blocks of ``S``
    bytes at evenly spaced offsets ``floor(j * (n - S) / (B - 1))``, ``j = 0..B-1``, of its
    ``n`` data bytes (:data:`FINGERPRINT_BLOCKS`, :data:`FINGERPRINT_BLOCK_BYTES`; the whole
    data when ``n <= B * S``). It changes whenever a sampled byte does: fine-tuning moves
    every weight that gets a gradient, so a fine-tuned pilot differs in practically every
    block (a 4 KiB block holds 1-2 thousand weights), while ~1 MiB read per file keeps the
    start-up check cheap. It is an identity check against serving the wrong pilot, not a
    tamper seal: an edit confined to unsampled bytes goes unseen. ``None`` when the folder
    holds no safetensors file (then the binding cannot check weights and says so)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        with path.open("rb") as f:
            header_length = int.from_bytes(f.read(8), "little")
            header = f.read(header_length)
            digest.update(f"{path.name}\0{size}\0".encode())
            digest.update(header)
            start = 8 + header_length
            data = size - start
            if data <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK_BYTES:
                digest.update(f.read())
                continue
            step = (data - FINGERPRINT_BLOCK_BYTES) / (FINGERPRINT_BLOCKS - 1)
            for j in range(FINGERPRINT_BLOCKS):
                f.seek(start + int(j * step))
                digest.update(f.read(FINGERPRINT_BLOCK_BYTES))
    return digest.hexdigest()


@dataclass(frozen=True)
class Binding:
    """What a copilot checkpoint is bound to, and its defaults for requests."""

    pilot: str
    vocab_hash: str
    config_hash: str
    space: str = "logits"
    default_lambda: float = 1.0
    #: :func:`weights_fingerprint` of the pilot; ``None`` in checkpoints that predate it.
    weights_hash: str | None = None

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
        weights: str | None = None,
    ) -> Binding:
        """``weights``: the pilot's :func:`weights_fingerprint`."""
        return cls(pilot, vocab_hash(vocab), config_hash(config), space, default_lambda, weights)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Binding:
        return cls(**data)

    def check(
        self,
        pilot: str,
        vocab: Mapping[str, int],
        config: Mapping[str, Any],
        weights: str | None,
    ) -> None:
        """Raise :class:`BindingError` unless ``pilot`` (vocabulary, config, weights
        fingerprint) is the pilot this copilot was trained on. Fails closed: a binding that
        records weights refuses a pilot whose weights cannot be fingerprinted."""
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
        if self.weights_hash is not None and weights is None:
            raise BindingError(
                f"it was trained on pilot '{self.pilot}' and bound to its weights, but "
                f"'{pilot}' has no safetensors file to compare them with"
            )
        if self.weights_hash is not None and weights != self.weights_hash:
            raise BindingError(
                f"it was trained on pilot '{self.pilot}', whose weights differ from those of "
                f"'{pilot}' (weights fingerprint mismatch; a fine-tuned pilot and the model "
                "it was tuned from are different pilots): serve the pilot it was trained "
                "with, or train a copilot for this model with `corrigo copilot train`"
            )
