from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .support import TEST_ENGINE, LiveServer, start_server, write_config

API_KEY = "test-key-0123456789"
SERVED_MODEL = "smollm2-135m-instruct"
#: Forget set of the session engine (tests/integration/test_unlearning.py).
FORGET_CAPITALS = Path(__file__).parent / "data" / "forget_capitals.jsonl"
#: The session engine's private forget set (tests/security/test_unlearning_secrecy.py): its name
#: must never reach a client, and its reports show the gate's decision only.
FORGET_VAULT = Path(__file__).parent / "data" / "forget_vault.jsonl"
#: A profile of the session engine that enforces unlearning with the private set.
GUARDED_PROFILE = "guarded"
#: The profiles the session engine lists in /v1/models after the served model.
PROFILES = (GUARDED_PROFILE,)


def private_copy(source: Path, folder: Path) -> str:
    """A copy of a forget-set file only its owner may read: corrigo refuses forget sets other
    users can read, and git does not keep a file's mode."""
    target = folder / source.name
    shutil.copyfile(source, target)
    target.chmod(0o600)
    return str(target)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> LiveServer:
    """The one engine of the test session: the embedded SmolLM2 behind ``corrigo serve``."""
    tmp = tmp_path_factory.mktemp("live_server")
    config = write_config(
        tmp / "corrigo.toml",
        {
            "auth": {"api_keys": [API_KEY, "second-key"]},
            "limits": {"max_n": 4, "max_request_bytes": 1_000_000},
            "engine": TEST_ENGINE,
            "forget_sets": {
                # Public, with detailed reports (tests/integration/test_unlearning.py).
                "capitals": {
                    "path": private_copy(FORGET_CAPITALS, tmp),
                    "public_name": True,
                    "report_detail": True,
                },
                # Private: the defaults (a fixed threshold, decision-only reports, no name).
                "vault": {"path": private_copy(FORGET_VAULT, tmp)},
            },
            "profiles": {
                GUARDED_PROFILE: {
                    "correction": {"unlearning": {"forget_set": "vault"}},
                    "enforce": True,
                },
            },
            # Refinement tests send verifications to loopback servers they start.
            "refinement": {
                "max_rounds": 4,
                "url_prefixes": ["http://127.0.0.1:"],
                "keepalive_seconds": 0.5,
            },
        },
    )
    server = start_server(
        config,
        tmp / "server.log",
        probe_during_startup={"models": "/v1/models", "ready": "/ready"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(live_server):
    from openai import OpenAI

    with OpenAI(
        base_url=f"{live_server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120
    ) as c:
        yield c


@pytest.fixture(scope="session")
def http(live_server):
    import httpx

    with httpx.Client(
        base_url=live_server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as c:
        yield c
