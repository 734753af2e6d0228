"""What an auxiliary model or copilot needs in memory while it serves, estimated from its
config (no weights loaded); adapters/aux_budget.py compares it with what the engine leaves.

For a model of ``P`` parameters, ``L`` layers, ``A`` query and ``K`` key/value heads of ``D``
dims, hidden size ``H``, MLP width ``I``, vocabulary ``V`` and (copilots) ``k`` pilot tokens
read per position, in a dtype of ``b`` bytes, stepped by decoding/aux/runner.py for ``N`` rows
of at most ``T`` tokens (vLLM's ``max_num_seqs`` and ``max_model_len``)::

    weights   = P b (+ V H b where the output layer is tied to the input embeddings and the
                     linear layers are packed, decoding/aux/packed.py: its packed copy)
    layout    = 2 L N K C D b                  the KV caches, C = T + HEADROOM columns: each row
                                               holds its own length plus headroom, so this is
                                               the worst case of N rows all T tokens long
    peak      = weights + layout + max(row, packed, decode) + WORKSPACE

the transient on top of the layout being the largest of what one operation holds at once::

    row       = layout / N                     a row outgrowing its cache: its old and new
                                               tensors for the copy
    packed    = S (W + A D b)                  one forward of S = max(T, PREFILL_TOKENS) packed
                                               tokens (joining rows' prompts: no logits, the
                                               runner computes the head at each row's last
                                               token only): the widest layer's activations and
                                               the attention output's concatenation
    decode    = N (V (b + 12) + W + A D b + 2 k H b) + 2 A C D b + 4 A C
                                               a step: logits (model dtype, a float32 copy, a
                                               gather, proxy-tuning's scaled copy), the widest
                                               layer's activations, the attention outputs, a
                                               copilot's pilot embeddings; and for the one row
                                               whose attention runs at a time, its keys and
                                               values repeated to every query head and its
                                               attention scores, where a kernel materialises
                                               them

with ``W = (3 I + 4 H + (A + 2 K) D) b`` per token (the MLP's three ``I``-wide tensors, a few
``H``-wide ones, the query/key/value projections), and :data:`WORKSPACE` for what the kernels
and the allocator hold beside the tensors. tests/unit/test_aux_memory.py checks the
weights and the caches against a loaded model byte for byte and the transient against a
measured peak; bench/aux_streams_check.py compares the whole with a CUDA device's peak.

A copilot (decoding/copilot/runner.py) holds its ``3 V H`` table parameters in ``dtype`` and
the rest (its decoder layers, with their fused projections) in float32, with its layers'
activations: ``b = 4`` for those (its caches are in ``dtype``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from decoding.aux.dtypes import DTYPE_BYTES
from decoding.aux.runner import HEADROOM, PREFILL_TOKENS
from decoding.copilot.checkpoint import read
from decoding.copilot.model import Copilot

#: Per model: kernel workspaces (on CUDA, the cuBLAS workspace of the model's stream: 32 MiB on
#: Hopper) and what the allocator holds beyond the live tensors (measured on the CPU: 6 MB over
#: the tensors for SmolLM2-135M joining 16 rows of 200 tokens).
WORKSPACE = 64 << 20


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model the estimate reads (from its config.json; ``parameters`` counted
    on a weightless copy of the model)."""

    parameters: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    #: Copilots: pilot tokens read per position (0 for a plain model).
    top_k: int = 0
    #: Whether the output layer shares the input embeddings' weight.
    tied_head: bool = False
    #: Parameters held in float32 whatever the dtype, with the layers' activations (a
    #: copilot's decoder layers: decoding/copilot/runner.py); 0 for a plain model.
    float32_parameters: int = 0

    @classmethod
    def of(
        cls,
        config: PretrainedConfig,
        parameters: int,
        top_k: int = 0,
        *,
        tied_head: bool = False,
        float32_parameters: int = 0,
    ) -> ModelShape:
        heads = config.num_attention_heads
        hidden = config.hidden_size
        return cls(
            parameters=parameters,
            layers=config.num_hidden_layers,
            attention_heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            # As decoding/aux/runner.py lays the cache out.
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            hidden=hidden,
            intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,
            vocab=config.vocab_size,
            top_k=top_k,
            tied_head=tied_head,
            float32_parameters=float32_parameters,
        )


@dataclass(frozen=True)
class Footprint:
    """Bytes one model holds at its peak (see the module docstring)."""

    weights: int
    #: The KV caches of every row at full length.
    layout: int
    #: The largest of a row's cache growing, a packed forward and a decode step.
    transient: int
    workspace: int = WORKSPACE

    @property
    def peak(self) -> int:
        return self.weights + self.layout + self.transient + self.workspace


def layout_bytes(shape: ModelShape, dtype: str, rows: int, columns: int) -> int:
    """KV caches of ``rows`` rows of ``columns`` columns each: keys and values."""
    return 2 * shape.layers * rows * shape.kv_heads * columns * shape.head_dim * DTYPE_BYTES[dtype]


def estimate(
    shape: ModelShape, dtype: str, rows: int, tokens: int, *, packed: bool = False
) -> Footprint:
    """The peak of a model in ``dtype`` serving ``rows`` rows of at most ``tokens`` tokens;
    ``packed``: its linear layers are packed (decoding/aux/packed.py ``packs``). A model with
    ``float32_parameters`` (a copilot) holds those and its layers' activations in float32:
    ``b`` is 4 there."""
    b = DTYPE_BYTES[dtype]
    layers_dtype = "float32" if shape.float32_parameters else dtype
    bl = DTYPE_BYTES[layers_dtype]
    columns = tokens + HEADROOM
    layout = layout_bytes(shape, dtype, rows, columns)
    widest = (
        3 * shape.intermediate
        + 4 * shape.hidden
        + (shape.attention_heads + 2 * shape.kv_heads) * shape.head_dim
    ) * bl
    output = shape.attention_heads * shape.head_dim * bl
    forward = max(tokens, PREFILL_TOKENS) * (widest + output)
    decode = rows * (
        shape.vocab * (b + 12) + widest + output + 2 * shape.top_k * shape.hidden * bl
    ) + (
        2 * shape.attention_heads * columns * shape.head_dim * bl
        + 4 * shape.attention_heads * columns
    )
    in_dtype = shape.parameters - shape.float32_parameters
    tied_copy = (packed and shape.tied_head) * shape.vocab * shape.hidden
    return Footprint(
        weights=(in_dtype + tied_copy) * b + shape.float32_parameters * 4,
        layout=layout,
        transient=max(layout // rows, forward, decode),
    )


def _parameters(build) -> int:
    """Parameters of the model ``build()`` makes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once


def model_shape(path: str) -> ModelShape:
    """The shape of the HF-format model at ``path`` (reads its config.json only)."""
    config = AutoConfig.from_pretrained(path)
    return ModelShape.of(
        config,
        _parameters(lambda: AutoModelForCausalLM.from_config(config)),
        tied_head=bool(getattr(config, "tie_word_embeddings", False)),
    )


def copilot_shape(path: str | Path) -> ModelShape:
    """The shape of the copilot checkpoint at ``path`` (reads its copilot.json only)."""
    checkpoint = read(Path(path).expanduser())
    config, top_k = checkpoint.config, checkpoint.top_k
    parameters = _parameters(lambda: _served_copilot(config, top_k))
    # Its vocabulary-size tables (E, F, the untied head) in the dtype, the rest in float32.
    tables = 3 * config.vocab_size * config.hidden_size
    return ModelShape.of(config, parameters, top_k, float32_parameters=parameters - tables)


def _served_copilot(config, top_k: int) -> Copilot:
    """The copilot as decoding/copilot/runner.py holds it: with its fused projections."""
    model = Copilot(config, top_k)
    model.fuse_projections()
    return model
