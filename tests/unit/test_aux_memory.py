"""The auxiliary models' memory: the dtype they run in, the estimate against a loaded model
(weights and KV caches byte for byte, the transient against a measured peak), a row's cache
growing alone, and the start-up refusal with its exact message."""

import re
from pathlib import Path

import pytest
import torch

from adapters.aux_budget import (
    AUX_WORKER_RESERVE,
    CPU_PROCESS_RESERVE,
    CUDA_RESERVE,
    AuxMemoryError,
    Declared,
    EngineMemory,
    _gib,
    budget,
    check_aux_memory,
    check_fits,
    engine_memory,
)
from adapters.aux_memory import (
    WORKSPACE,
    ModelShape,
    copilot_shape,
    estimate,
    layout_bytes,
    model_shape,
)
from adapters.default_model import ensure_default_model
from adapters.engine import ServedModel, check_engine_args, engine_args
from decoding.aux.dtypes import dtype_name, resolve_aux_dtype
from decoding.aux.packed import PackedLinear, packs
from decoding.aux.runner import HEADROOM, AuxModelRunner, runner_dtype
from decoding.copilot.binding import Binding
from decoding.copilot.checkpoint import save
from decoding.copilot.model import Copilot
from decoding.copilot.runner import CopilotRunner
from decoding.pipeline import TokenStream

from ..support import make_tiny_llama, tiny_llama_config

GiB = 1 << 30


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_llama(tmp_path_factory.mktemp("auxmem") / "tiny", ensure_default_model()))


# -- the dtype --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "engine", "device", "native", "expected"),
    [
        ("auto", "bfloat16", "cuda", False, "bfloat16"),  # a GPU: the engine's dtype
        ("auto", "float16", "cuda", False, "float16"),
        ("auto", "float32", "cuda", True, "float32"),
        ("auto", "bfloat16", "cpu", True, "bfloat16"),  # a CPU computing bf16 natively
        ("auto", "bfloat16", "cpu", False, "float32"),  # bf16 emulated: float32 is faster
        ("auto", "float16", "cpu", True, "float32"),
        ("auto", "float32", "cpu", True, "float32"),
        ("float16", "bfloat16", "cpu", False, "float16"),  # explicit: kept
        ("float32", "bfloat16", "cuda", True, "float32"),
    ],
)
def test_dtype_resolution(setting, engine, device, native, expected):
    for name in (engine, f"torch.{engine}"):  # a name, or str() of vLLM's torch.dtype
        resolved = resolve_aux_dtype(
            setting, engine_dtype=name, device_type=device, native_bf16=native
        )
        assert resolved == expected


def test_the_runners_dtype_follows_the_engine_on_a_gpu():
    cuda = torch.device("cuda", 0)
    assert runner_dtype("auto", torch.float16, cuda) == torch.float16
    assert runner_dtype("float32", torch.bfloat16, cuda) == torch.float32
    assert runner_dtype("auto", torch.float32, torch.device("cpu")) == torch.float32


def test_runners_load_in_their_dtype(tiny, tmp_path):
    runner = AuxModelRunner(tiny, dtype=torch.bfloat16)
    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
    runner.step({1: TokenStream([1, 2, 3], [])})
    assert runner.rows[1].store.dtype == torch.bfloat16
    model = Copilot(tiny_llama_config(50, hidden_size=64, head_dim=32), top_k=3)
    save(tmp_path / "ck", model, Binding("p", "v", "c"))
    copilot = CopilotRunner(str(tmp_path / "ck"), dtype=torch.bfloat16)
    # Its vocabulary-size tables and caches in bf16; its decoder layers in float32.
    served = copilot.runner.model
    tables = [served.backbone.embed_tokens, served.pilot_embed, served.head]
    assert {
        t.dtype
        for m in tables
        for t in [*m.parameters(), *vars(m).values()]
        if isinstance(t, torch.Tensor)
    } == {torch.bfloat16}
    in_tables = {id(p) for m in tables for p in m.parameters()}
    rest = {p.dtype for p in served.parameters() if id(p) not in in_tables}
    assert rest == {torch.float32}
    copilot.step({1: TokenStream([1, 2, 3], [])}, {})
    assert copilot.runner.rows[1].store.dtype == torch.bfloat16


# -- the estimate against a loaded model ------------------------------------------------------


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_and_kv_cache_are_the_estimate_byte_for_byte(tiny, dtype):
    shape = model_shape(tiny)
    runner = AuxModelRunner(tiny, dtype=getattr(torch, dtype))
    packed = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
    assert bool(packed) == packs("cpu", dtype)
    # The tiny model's head is tied to its embeddings: packed, it adds the head's packed copy.
    assert shape.tied_head
    held = _bytes(runner.model.parameters()) + sum(m.nbytes for m in packed)
    assert estimate(shape, dtype, 1, 1, packed=bool(packed)).weights == held
    lengths = {0: 40, 1: 7, 2: 19}  # N = 3 rows, the longest L = 40 tokens
    streams = {k: TokenStream(list(range(1, n + 1)), []) for k, n in lengths.items()}
    runner.step(streams)
    held = sum(c.nbytes for c in runner.rows.values())
    # Each row holds its own length plus headroom (ragged), never the longest row's.
    assert held == sum(layout_bytes(shape, dtype, 1, n + HEADROOM) for n in lengths.values())
    assert held < layout_bytes(shape, dtype, 3, 40 + HEADROOM)
    # The estimate's layout is the worst case: N rows of L tokens.
    assert estimate(shape, dtype, 3, 40).layout == layout_bytes(shape, dtype, 3, 40 + HEADROOM)


def test_a_copilots_shape_counts_its_own_tables(tmp_path):
    model = Copilot(tiny_llama_config(50, hidden_size=64, head_dim=32), top_k=3)
    save(tmp_path / "ck", model, Binding("p", "v", "c"))
    shape = copilot_shape(tmp_path / "ck")
    assert shape.top_k == 3 and shape.vocab == 50
    for dtype in ("float32", "bfloat16"):
        # As the runner holds it: fused projections, tables in the dtype (the head packed
        # where linear layers are), decoder layers in float32.
        served = CopilotRunner(str(tmp_path / "ck"), dtype=getattr(torch, dtype)).runner.model
        packed = [m for m in served.modules() if isinstance(m, PackedLinear)]
        held = _bytes(served.parameters()) + sum(m.nbytes for m in packed)
        assert estimate(shape, dtype, 1, 1, packed=bool(packed)).weights == held
    assert shape.parameters > sum(p.numel() for p in model.parameters())  # fused projections


def _peak_rss_reset() -> int:
    """Reset this process's peak resident size to its current one; return the current one."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024


def _measured_step(runner: AuxModelRunner, streams: dict[int, TokenStream]) -> int:
    """The peak resident growth of one step. Tensors over 32 MB are always fresh pages (glibc
    maps them), so the dominant ones are measured; smaller ones may reuse freed memory."""
    runner.step({99: TokenStream([1, 2, 3], [])})  # lazy set-up outside the measurement
    runner.release(99)
    base = _peak_rss_reset()
    runner.step(streams)
    return _status("VmHWM") - base


needs_peak_reset = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset"
)


@needs_peak_reset
def test_a_decode_step_stays_within_the_estimate(tiny):
    """1024 rows: the step's logits dominate (no prefill: one-token streams)."""
    shape, rows = model_shape(tiny), 1024
    streams = {k: TokenStream([1 + k], []) for k in range(rows)}
    measured = _measured_step(AuxModelRunner(tiny), streams)
    footprint = estimate(shape, "float32", rows, 1)
    assert measured <= footprint.layout + footprint.transient + footprint.workspace
    # The logits are seen, so the bound is not vacuous. Within 5%: resident pages the step
    # frees (glibc trimming memory released before it) lower the growth by a few hundred kB.
    assert measured >= 0.95 * rows * shape.vocab * 4


@needs_peak_reset
def test_a_prefill_computes_no_logits_and_stays_within_the_estimate(tiny):
    """Two rows joining with 1500 tokens: the prefill runs the model without its head, so its
    peak is far below the prompt's logits (295 MB here)."""
    shape, tokens = model_shape(tiny), 1500
    generator = torch.Generator().manual_seed(0)
    streams = {
        k: TokenStream(torch.randint(0, 49000, (tokens,), generator=generator).tolist(), [])
        for k in range(2)
    }
    measured = _measured_step(AuxModelRunner(tiny), streams)
    footprint = estimate(shape, "float32", 2, tokens)
    assert measured <= footprint.layout + footprint.transient + footprint.workspace
    assert measured < tokens * shape.vocab * 4 / 4


def test_a_row_outgrowing_its_cache_moves_alone(tiny):
    """Rows joining and leaving allocate and free their own caches; a row outgrowing its
    headroom is copied to a larger tensor, the other rows' tensors untouched."""
    runner = AuxModelRunner(tiny)
    outputs = {k: [] for k in (0, 1, 2, 3, 9)}
    streams = {k: TokenStream(list(range(1, 30 + k)), outputs[k]) for k in range(4)}
    runner.step(streams)
    before = {k: c.store for k, c in runner.rows.items()}
    streams[9] = TokenStream([5, 6, 7], outputs[9])  # joins
    del streams[0]  # leaves
    for k in (1, 2, 3):
        outputs[k].append(1)
    runner.step(streams)
    assert all(runner.rows[k].store is before[k] for k in (1, 2, 3))
    grower = runner.rows[3]
    capacity = grower.capacity
    while grower.capacity == capacity:
        kept = {9: runner.rows[9].store}  # joined a step later: grows a step later
        for k in streams:
            outputs[k].append(1)
        runner.step(streams)
        assert all(runner.rows[k].store is kept[k] for k in kept)
    assert grower.capacity == grower.cached + HEADROOM


# -- the budget and the refusal -----------------------------------------------------------------

#: Llama-3.2-1B's config.json numbers (parameters counted on a weightless copy).
LLAMA_1B = ModelShape(
    parameters=1_235_814_400,
    layers=16,
    attention_heads=32,
    kv_heads=8,
    head_dim=64,
    hidden=2048,
    intermediate=8192,
    vocab=128_256,
)


def gpu(**overrides) -> EngineMemory:
    settings = dict(
        platform="cuda",
        rows=256,
        tokens=8192,
        dtype="bfloat16",
        utilization=0.9,
        kv_cache_bytes=None,
        workers=1,
        device_bytes=80 * GiB,
    )
    return EngineMemory(**{**settings, **overrides})


def test_the_cuda_budget_is_what_vllm_leaves_less_the_context():
    room = budget(gpu(), None)
    assert room.bytes == int((1 - 0.9) * 80 * GiB) - CUDA_RESERVE and room.weights_counted
    assert budget(gpu(), 123).bytes == 123
    with pytest.raises(AuxMemoryError, match="set aux_memory.budget_bytes"):
        budget(gpu(kv_cache_bytes=GiB), None)
    with pytest.raises(AuxMemoryError, match="not visible from this process"):
        budget(gpu(device_bytes=None), None)
    assert not budget(gpu(kv_cache_bytes=GiB), 5 * GiB).weights_counted


def test_the_cpu_budget_is_the_available_memory_less_the_engines():
    cpu = gpu(platform="cpu", device_bytes=None, host_available=20 * GiB, host_total=24 * GiB)
    share = budget(cpu, None)
    assert share.bytes == 20 * GiB - int(0.9 * 24 * GiB) - 2 * CPU_PROCESS_RESERVE
    fixed = budget(
        EngineMemory(**{**cpu.__dict__, "kv_cache_bytes": 2 * GiB, "engine_weights": GiB}), None
    )
    assert fixed.bytes == 20 * GiB - 3 * GiB - 2 * CPU_PROCESS_RESERVE
    assert share.weights_counted and not fixed.weights_counted


def test_models_that_do_not_fit_refuse_with_what_to_change():
    declared = [
        Declared("aux_models.expert", LLAMA_1B, "auto"),
        Declared("aux_models.anti", LLAMA_1B, "auto"),
    ]
    with pytest.raises(AuxMemoryError) as refused:
        check_fits(declared, gpu(), None, native_bf16=False)
    assert str(refused.value) == (
        "the auxiliary models and copilots do not fit beside the engine: they need 130.3 GiB "
        "on each GPU at their peak, for engine.max_num_seqs = 256 rows of "
        "engine.max_model_len = 8192 tokens, and 7.0 GiB is left there "
        "((1 - engine.gpu_memory_utilization 0.9) x 80.0 GiB - 1.0 GiB for the CUDA context).\n"
        "  aux_models.expert (bfloat16): KV cache 64.5 GiB, activations 656 MiB\n"
        "  aux_models.anti (bfloat16): KV cache 64.5 GiB, activations 656 MiB\n"
        "  (their weights, 4.6 GiB, are not in this figure: vLLM counts them in its own share, "
        "and its KV cache is that much smaller)\n"
        "Lower engine.max_num_seqs (at most 11 rows fit) or engine.max_model_len, lower "
        "engine.gpu_memory_utilization, run an auxiliary model or copilot in a smaller dtype "
        "([aux_models.NAME] / [copilots.NAME] dtype), or, if you know the memory is there, set "
        'aux_memory.budget_bytes (docs/deployment.md, "Memory budgeting for auxiliary models").'
    )
    # "at most 11 rows fit" is exact: 11 rows fit and 12 do not.
    assert check_fits(declared, gpu(rows=11), None, native_bf16=False).startswith(
        "auxiliary models and copilots: 6.8 GiB needed on each GPU beside the engine"
    )
    with pytest.raises(AuxMemoryError):
        check_fits(declared, gpu(rows=12), None, native_bf16=False)


def test_on_the_cpu_an_auxiliary_models_worker_process_and_weights_are_needed():
    """vLLM's share counts the weights of what its process loads (a copilot), not those of the
    proxy-tuning models in their worker processes (decoding/aux/remote.py), which also take
    their own process's memory."""
    cpu = gpu(platform="cpu", device_bytes=None, host_available=23 * GiB, host_total=24 * GiB)
    room = budget(cpu, None)
    assert room.weights_counted
    model = estimate(LLAMA_1B, "bfloat16", 256, 8192)
    line = check_fits(
        [Declared("aux_models.expert", LLAMA_1B, "bfloat16")], cpu, model.peak * 2, False
    )
    assert line.startswith(
        f"auxiliary models and copilots: {_gib(model.peak + AUX_WORKER_RESERVE)} "
    )
    line = check_fits([Declared("copilots.fix", LLAMA_1B, "bfloat16")], cpu, model.peak * 2, False)
    assert line.startswith(f"auxiliary models and copilots: {_gib(model.peak - model.weights)} ")
    with pytest.raises(AuxMemoryError, match="weights 2.3 GiB, worker process 512 MiB"):
        check_fits([Declared("aux_models.expert", LLAMA_1B, "bfloat16")], cpu, None, False)


def test_workspace_is_part_of_every_footprint():
    assert estimate(LLAMA_1B, "bfloat16", 1, 1).workspace == WORKSPACE


def test_the_figures_come_from_vllms_resolved_config(tiny):
    """The attributes read from vLLM's config exist and mean what the budget takes them for."""
    args = engine_args(
        ServedModel(tiny, "tiny"),
        {"max_model_len": 256, "max_num_seqs": 12, "kv_cache_memory_bytes": GiB},
    )
    config = check_engine_args(args)
    engine = engine_memory(config, tiny)
    assert (engine.platform, engine.rows, engine.tokens, engine.workers) == ("cpu", 12, 256, 1)
    assert engine.dtype == dtype_name(config.model_config.dtype) and engine.kv_cache_bytes == GiB
    assert engine.engine_weights == estimate(model_shape(tiny), engine.dtype, 1, 1).weights
    assert 0 < engine.host_available <= engine.host_total
    declared = [Declared("aux_models.same", model_shape(tiny), "auto")]
    line = check_aux_memory(declared, config, tiny, None)
    assert "needed on this host beside the engine for 12 rows of 256 tokens" in line
