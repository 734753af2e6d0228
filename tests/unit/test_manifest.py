"""The deployment manifest: what it carries, how vLLM's config carries it to the engine side
(pickled with the config, hashed without the per-start channel, never printed), and the one
validation context built from it."""

import pickle

import pytest

from adapters.default_model import ensure_default_model
from adapters.engine import engine_args, resolve_model
from adapters.manifest import (
    DeploymentManifest,
    ForgetSetEntry,
    ManifestError,
    ModelEntry,
    ReportChannel,
)
from decoding.copilot.params import COPILOTS_CONTEXT
from decoding.proxy_tuning import AUX_MODELS_CONTEXT
from decoding.registry import DEFAULT
from decoding.unlearning import FORGET_SETS_CONTEXT

KEY = "ab" * 32


def manifest(
    port: int = 4000, key: str = KEY, expert: str = "/models/expert"
) -> DeploymentManifest:
    return DeploymentManifest(
        aux_models={
            "expert": ModelEntry(expert),
            "anti": ModelEntry("/models/anti", "bfloat16"),
        },
        copilots={"fix": ModelEntry("/copilots/fix")},
        forget_sets={"vault": ForgetSetEntry("/secret/vault.jsonl", "d" * 64, 12)},
        channel=ReportChannel(f"tcp://127.0.0.1:{port}", key),
    )


def test_it_round_trips_through_json_and_pickle():
    m = manifest()
    assert DeploymentManifest.from_json(m.to_json()) == m
    assert pickle.loads(pickle.dumps(m)) == m
    assert DeploymentManifest.from_json(DeploymentManifest().to_json()) == DeploymentManifest()


def test_the_validation_context_names_what_requests_may_use():
    assert manifest().correction_context(DEFAULT) == {
        AUX_MODELS_CONTEXT: {"expert", "anti"},
        COPILOTS_CONTEXT: {"fix"},
        FORGET_SETS_CONTEXT: {"vault": 12},
    }


def test_its_hash_ignores_the_per_start_channel_but_not_the_deployment():
    assert manifest(4000, KEY).compute_hash() == manifest(4001, "cd" * 32).compute_hash()
    assert manifest().compute_hash() != manifest(expert="/models/other").compute_hash()


def test_the_key_is_not_in_its_repr():
    assert KEY not in repr(manifest())


@pytest.fixture(scope="module")
def model():
    return resolve_model(str(ensure_default_model()), "m")


def test_vllm_config_carries_it_whole_and_hashes_it_without_the_channel(model):
    first = engine_args(model, {}, manifest(4000, KEY)).create_engine_config()
    again = engine_args(model, {}, manifest(4001, "cd" * 32)).create_engine_config()
    other = engine_args(model, {}, manifest(expert="/models/other")).create_engine_config()
    assert first.additional_config == manifest(4000, KEY)
    assert DeploymentManifest.of(pickle.loads(pickle.dumps(first))) == manifest(4000, KEY)
    # vLLM keys its compile cache by this hash: a restart reuses it, a new deployment does not.
    assert first.compute_hash() == again.compute_hash() != other.compute_hash()
    # vLLM logs the config at start-up through str(): nothing of the manifest appears there.
    assert "vault" not in str(first) and KEY not in str(first)


def test_an_engine_without_the_manifest_is_refused():
    with pytest.raises(ManifestError, match="corrigo serve"):
        DeploymentManifest.of(None)
