"""The [engine] section passes through to vLLM's own argument classes, which validate it."""

import pytest

from adapters.default_model import ensure_default_model
from adapters.engine import (
    EngineConfigError,
    ServedModel,
    check_engine_args,
    cpu_has_native_bf16,
    engine_args,
    resolve_model,
)
from adapters.logits_processor import LOGITS_PROCESSOR_FQCN
from adapters.manifest import DeploymentManifest
from adapters.vllm_compat import platform_runs_ray


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return resolve_model(str(ensure_default_model()), "m")


def test_any_vllm_engine_argument_passes_through(model):
    args = engine_args(
        model,
        {
            "max_model_len": 1024,
            "tensor_parallel_size": 2,
            "distributed_executor_backend": "ray",
            "seed": 7,
        },
    )
    assert (args.max_model_len, args.tensor_parallel_size, args.seed) == (1024, 2, 7)
    assert args.distributed_executor_backend == "ray"
    assert args.model == model.path and args.served_model_name == ["m"]
    assert args.logits_processors == [LOGITS_PROCESSOR_FQCN]


def test_unknown_engine_argument_is_named(model):
    with pytest.raises(
        EngineConfigError, match="engine.max_model_length is not a vLLM engine argument"
    ):
        engine_args(model, {"max_model_length": 10})


@pytest.mark.parametrize(
    "key",
    ["model", "served_model_name", "logits_processors", "additional_config", "kda_decode_backend"],
)
def test_arguments_corrigo_owns_are_refused(model, key):
    with pytest.raises(EngineConfigError, match=f"engine.{key} is set by corrigo"):
        engine_args(model, {key: "x"})


def test_the_manifest_rides_in_additional_config(model):
    assert engine_args(model, {}).additional_config == DeploymentManifest()


def test_prefill_context_parallelism_is_refused(model):
    with pytest.raises(EngineConfigError, match="prefill_context_parallel_size"):
        engine_args(model, {"prefill_context_parallel_size": 2})


def test_ray_is_refused_at_start_up_where_vllm_cannot_run_it(model):
    # vLLM's CPU platform has no Ray device key: its Ray executor would fail in the engine
    # process ("current platform cpu does not support ray"), after spawning it.
    if platform_runs_ray():
        pytest.skip("this platform runs Ray")
    args = engine_args(model, {"tensor_parallel_size": 2, "distributed_executor_backend": "ray"})
    with pytest.raises(EngineConfigError, match="does not support Ray on this platform"):
        check_engine_args(args)


def test_values_are_validated_by_vllm(model):
    check_engine_args(engine_args(model, {"max_model_len": 1024, "enforce_eager": True}))
    with pytest.raises(EngineConfigError, match="rejected by vLLM"):
        check_engine_args(engine_args(model, {"max_model_len": 10**9}))


def test_cpu_defaults_fill_only_what_is_unset(model):
    args = engine_args(model, {"gpu_memory_utilization": 0.3})
    assert args.gpu_memory_utilization == 0.3
    assert engine_args(model, {}).gpu_memory_utilization == 0.2


def test_bf16_detection_reads_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert not cpu_has_native_bf16(info)
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(info)
    assert cpu_has_native_bf16(tmp_path / "missing")


def test_model_id_defaults_to_folder_name(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_model(str(folder), None) == ServedModel(str(folder.resolve()), "my-model")
    assert resolve_model(str(folder), "alias").model_id == "alias"
