"""Linear layers with their weights packed once for oneDNN (the CPU's matmul library), where
that pays: bf16 on the CPU.

``F.linear`` on the CPU reorders a bf16 weight into oneDNN's blocked layout on every call; a
decode step's matmuls are a few rows against each weight, so that reorder is a large share of
the step. Packing each weight once (what inductor's freezing pass does for CPU linears, and
vLLM's CPU kernels do for the engine's own weights) computes the same products: in bf16 the
logits came out bit-identical, and SmolLM2-135M's decode step took 20-27% less time for 1-32
rows (docs/benchmarks.md, "Auxiliary forward"). In float32 packing measured no faster, so
float32 models are left as they are.

A packed layer holds its packed weight instead of its parameter; an output layer tied to the
input embeddings (which keep the plain weight) therefore adds one packed copy of that matrix
(adapters/aux_memory.py counts it).
"""

from __future__ import annotations

import torch
from torch import nn

#: Rows a packed layout is tuned for (a hint to oneDNN; any row count computes correctly).
ROWS_HINT = 8


def packs(device_type: str, dtype: str) -> bool:
    """Whether a model in ``dtype`` (a torch dtype's name) on ``device_type`` gets packed
    linear layers."""
    return device_type == "cpu" and dtype == "bfloat16" and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` packed for oneDNN."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ROWS_HINT)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    @property
    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()


def pack_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` in ``model`` by a :class:`PackedLinear`; returns how many."""
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in found:
        setattr(parent, name, PackedLinear(child))
    return len(found)
