"""``VLLM_USE_V2_MODEL_RUNNER=1`` is refused at start-up, before any engine, with the reason:
corrigo's logits processor implements vLLM's V1 interface, which the V2 runner does not load."""

from __future__ import annotations

import pytest

from adapters.default_model import ensure_default_model
from adapters.engine import (
    MODEL_RUNNER_ENV,
    EngineConfigError,
    check_engine_args,
    check_model_runner,
    engine_args,
    resolve_model,
)
from server.cli import main


@pytest.mark.parametrize("value", ["1", "true", ""])
def test_anything_but_zero_is_refused_with_the_reason(value: str) -> None:
    with pytest.raises(EngineConfigError) as error:
        check_model_runner({MODEL_RUNNER_ENV: value})
    message = str(error.value)
    assert f"{MODEL_RUNNER_ENV}={value!r} is not supported" in message
    assert "V1 model runner" in message and "logits processor" in message
    assert f"set {MODEL_RUNNER_ENV}=0" in message


@pytest.mark.parametrize("environ", [{}, {MODEL_RUNNER_ENV: "0"}, {MODEL_RUNNER_ENV: " 0 "}])
def test_unset_or_zero_passes(environ: dict[str, str]) -> None:
    check_model_runner(environ)


def test_engine_args_and_the_built_config_keep_the_v1_runner(monkeypatch) -> None:
    model = resolve_model(str(ensure_default_model()), "m")
    check_engine_args(engine_args(model, {"max_model_len": 512, "enforce_eager": True}))
    monkeypatch.setenv(MODEL_RUNNER_ENV, "1")
    with pytest.raises(EngineConfigError, match="V1 model runner"):
        engine_args(model, {"max_model_len": 512})


def test_serve_exits_before_the_engine_starts(monkeypatch, tmp_path, capsys) -> None:
    # `corrigo serve` returns 2 with the message while building the app: no engine was started.
    config = tmp_path / "corrigo.toml"
    config.write_text("[engine]\nenforce_eager = true\nmax_model_len = 512\n")
    monkeypatch.setenv(MODEL_RUNNER_ENV, "1")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"corrigo: {MODEL_RUNNER_ENV}='1' is not supported" in err
    assert "README: Scaling out" in err


def test_a_setting_that_forces_the_v2_runner_is_refused() -> None:
    # vLLM 0.33 on CUDA picks the V2 runner for watermarking whatever the environment says; the
    # CPU build refuses V2 while building its config, so the built config is stood in for here.
    class ForcesV2:
        distributed_executor_backend = None

        def create_engine_config(self):
            return type("VllmConfig", (), {"use_v2_model_runner": True})()

    with pytest.raises(EngineConfigError, match="makes vLLM choose its V2 model runner"):
        check_engine_args(ForcesV2())
