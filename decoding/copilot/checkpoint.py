"""A copilot checkpoint: a folder holding its weights and what it is.

copilot.json          {"format": 1, "top_k": k, "config": {...LlamaConfig...},
                       "binding": {...Binding...}}
copilot.safetensors   the weights (float32)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from .binding import Binding
from .model import Copilot

META = "copilot.json"
WEIGHTS = "copilot.safetensors"
FORMAT = 1


class CheckpointError(ValueError):
    """A folder that is not a copilot checkpoint corrigo can read; the message says why."""


@dataclass(frozen=True)
class CopilotCheckpoint:
    folder: Path
    top_k: int
    config: LlamaConfig
    binding: Binding

    def load_model(self, device: str | torch.device = "cpu") -> Copilot:
        model = Copilot(self.config, self.top_k)
        model.load_state_dict(load_file(str(self.folder / WEIGHTS), device=str(device)))
        return model.to(device).eval()


def save(folder: str | Path, model: Copilot, binding: Binding) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    meta = {
        "format": FORMAT,
        "top_k": model.top_k,
        "config": model.config.to_dict(),
        "binding": binding.to_json(),
    }
    (folder / META).write_text(json.dumps(meta, indent=2))


def read(folder: str | Path) -> CopilotCheckpoint:
    """The checkpoint's metadata (weights are loaded by :meth:`CopilotCheckpoint.load_model`)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder} is not a copilot checkpoint (no {META}; make one with `corrigo copilot train`)"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / META} is not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / META}: unsupported format {meta.get('format')!r}")
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS}")
    try:
        return CopilotCheckpoint(
            folder,
            int(meta["top_k"]),
            LlamaConfig.from_dict(meta["config"]),
            Binding.from_json(meta["binding"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / META}: {exc}") from None
