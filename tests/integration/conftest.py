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
    copilot, a profile ``tuned`` and an
    extra correction (tests/integration/delayed_bias/)."""
    paths = tiny_deployment.paths
    template = tiny_deployment.folder / "anti.jinja"
    template.write_text(tiny.AUX_TEMPLATE)
    config = write_config(
        tiny_deployment.folder / "corrigo.toml",
        {
            "model": {"path": str(paths["base"])},
            "engine": tiny.ENGINE,
            "aux_models.expert": {"path": str(paths["expert"])},
            "aux_models.anti": {"path": str(paths["anti"])},
            # The same models in their own chat formats (tests/integration/test_proxy_tuning_exact.py).
            "aux_models.expert_base": {"path": str(paths["expert"]), "chat_template": "base"},
            "aux_models.anti_file": {"path": str(paths["anti"]), "chat_template": str(template)},
            "copilots.fix": {"path": str(tiny_deployment.copilot)},
            # A correction added by configuration only (tests/integration/test_extra_correction.py).
            "corrections": {"extra": ["tests.integration.delayed_bias:CORRECTION"]},
            "profiles.tuned": {
                "correction": {"proxy_tuning": {"expert": "expert", "anti_expert": "anti"}}
            },
        },
    )
    server = start_server(config, tiny_deployment.folder / "server.log")
    yield server
    server.stop()
