"""Copilots a deployment declares (``[copilots.NAME] path = ...``): the binding check against
the served model at start-up, and the engine-side runner (the logits processor learns of them
from the deployment manifest, adapters/manifest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from decoding.copilot.binding import Binding, BindingError, weights_fingerprint
from decoding.copilot.checkpoint import CheckpointError, read
from decoding.pipeline import TokenStream

from ..aux.dtypes import dtype_name
from ..aux.packed import PackedLinear, packs
from ..aux.runner import AuxModelRunner


class CopilotConfigError(ValueError):
    """A declared copilot that cannot serve beside the served model; the message says why."""


def pilot_identity(pilot_path: str) -> tuple[dict[str, int], dict, str | None]:
    """The pilot's vocabulary, model config and weights fingerprint, as bindings check them."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pilot_path)
    config = AutoConfig.from_pretrained(pilot_path).to_dict()
    return tokenizer.get_vocab(), config, weights_fingerprint(pilot_path)


def check_binding(name: str, path: str, pilot_path: str) -> Binding:
    """The copilot's binding, after checking it is bound to the model at ``pilot_path``."""
    folder = Path(path).expanduser().resolve()
    try:
        checkpoint = read(folder)
    except CheckpointError as exc:
        raise CopilotConfigError(f"copilots.{name}: {exc}") from None
    vocab, config, weights = pilot_identity(pilot_path)
    try:
        checkpoint.binding.check(pilot_path, vocab, config, weights)
    except BindingError as exc:
        raise CopilotConfigError(
            f"copilots.{name} ({folder}) cannot serve the model {pilot_path}: {exc}"
        ) from None
    return checkpoint.binding


class CopilotRunner:
    """A copilot checkpoint stepped with its own KV cache, batched across rows, by the
    auxiliary model runner (one forward per step for all the rows using it).

    ``dtype``: what its vocabulary-size tables (``E``, ``F``, the head: nearly all its bytes)
    and its KV caches hold (its attention runs in it: a row's cache is read whole at every
    step); its decoder layers' weights and activations are float32 whatever ``dtype`` is
    (decoding/copilot/model.py ``Copilot.tables_to`` says why). Its weights are saved in
    float32. bf16 tables are sound for a copilot: its rectification comes out within 2% of the
    float32 one's largest entry, and the fused distribution picks the same tokens wherever
    float32's choice is not a near-tie (tests/unit/test_copilot.py).
    """

    def __init__(
        self, path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        checkpoint = read(path)
        self.top_k = checkpoint.top_k
        self.binding = checkpoint.binding
        model = checkpoint.load_model(device)
        model.fuse_projections()
        self.runner = AuxModelRunner(
            path, device=device, dtype=torch.float32, model=model, cache_dtype=dtype
        )
        model.tables_to(dtype)
        if packs(torch.device(device).type, dtype_name(dtype)):
            model.head = PackedLinear(model.head)
        self.dtype = dtype

    def step(
        self, streams: Mapping[int, TokenStream], inputs: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return self.runner.step(streams, inputs)

    def release(self, uid: int) -> None:
        self.runner.release(uid)
