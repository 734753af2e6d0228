"""Fixtures the integration modules share (tests/integration/tiny.py)."""

from __future__ import annotations

import pytest

from ..support import start_server, write_config
from . import tiny


@pytest.fixture(scope="session")
def tiny_deployment(tmp_path_factory) -> tiny.TinyDeployment:
    return tiny.build(tmp_path_factory.mktemp("tiny-deployment"))


@pytest.fixture(scope="session")
def tiny_models(tiny_deployment):
    """``({name: transformers model}, copilot model)``."""
    return tiny.load(tiny_deployment)


@pytest.fixture(scope="session")
def tiny_server(tiny_deployment):
    """``base`` served with both auxiliary models (and each again in its own chat format), the
    copilot, a profile ``tuned``, an extra correction (tests/integration/delayed_bias/), a LoRA
    adapter ``tiny.LORA_MODEL``, the hermes tool-call parser and processed logprobs."""
    paths = tiny_deployment.paths
    template = tiny_deployment.folder / "anti.jinja"
    template.write_text(tiny.AUX_TEMPLATE)
    config = write_config(
        tiny_deployment.folder / "corrigo.toml",
        {
            "model": {"path": str(paths["base"])},
            # Logprobs of the corrected distribution (tests/integration/test_composition_matrix.py).
            "engine": {**tiny.ENGINE, "logprobs_mode": "processed_logprobs"},
            # float32 pinned, not left to "auto" (which follows the engine's dtype): the exactness
            # tests compare against float32 references.
            "aux_models.expert": {"path": str(paths["expert"]), "dtype": "float32"},
            "aux_models.anti": {"path": str(paths["anti"]), "dtype": "float32"},
            # The same models in their own chat formats (tests/integration/test_proxy_tuning_exact.py).
            "aux_models.expert_base": {
                "path": str(paths["expert"]),
                "chat_template": "base",
                "dtype": "float32",
            },
            "aux_models.anti_file": {
                "path": str(paths["anti"]),
                "chat_template": str(template),
                "dtype": "float32",
            },
            "copilots.fix": {"path": str(tiny_deployment.copilot), "dtype": "float32"},
            # A correction added by configuration only (tests/integration/test_extra_correction.py).
            "corrections": {"extra": ["tests.integration.delayed_bias:CORRECTION"]},
            "profiles.tuned": {
                "correction": {"proxy_tuning": {"expert": "expert", "anti_expert": "anti"}}
            },
            # vLLM front-end settings (tests/integration/test_vllm_routes.py).
            "frontend": {"enable_prompt_tokens_details": True, "enable_force_include_usage": True},
        },
    )
    # LoRA the way a `vllm serve` command line asks for it, the adapter served as its own
    # model id, and loaded and unloaded at run time (tests/integration/test_vllm_routes.py).
    flags = ["--enable-lora", "--max-lora-rank", str(tiny.LORA_RANK)]
    flags += ["--lora-modules", f"{tiny.LORA_MODEL}={tiny_deployment.lora}"]
    # Tool calling as `vllm serve` enables it (tests/integration/test_tool_calling.py).
    flags += ["--tool-call-parser", "hermes", "--enable-auto-tool-choice"]
    # JSON without free whitespace: a random model would fill max_tokens with it
    # (tests/integration/test_composition_matrix.py, test_tool_calling.py).
    flags += [
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]
    server = start_server(
        config,
        tiny_deployment.folder / "server.log",
        # tool_choice "required"/named as a JSON schema of the calls (vLLM's default for the
        # hermes parser is a structural tag the random model never triggers).
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"},
        flags=flags,
    )
    yield server
    server.stop()
