from __future__ import annotations

import faulthandler
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import pytest

from decoding.unlearning.embeddings import minilm
from decoding.unlearning.fit_gate import fit_files

from .support import TEST_ENGINE, LiveServer, start_server, write_config

API_KEY = "test-key-0123456789"
SERVED_MODEL = "smollm2-135m-instruct"
#: Forget set of the session engine (tests/integration/test_unlearning.py).
FORGET_CAPITALS = Path(__file__).parent / "data" / "forget_capitals.jsonl"
#: The capitals set's texts for the ``refuse`` and ``abstain`` policies (operator config).
FORGET_REFUSAL = "That topic is withheld on this service."
FORGET_ABSTENTION = "I must not share that."
#: Seconds the whole test run may take before it is stopped with every thread's traceback, so a
#: hang fails fast instead of holding CI (a full run takes about 10 minutes on 2 cores).
DEADLINE = float(os.environ.get("CORRIGO_TEST_DEADLINE", 1800))
_DEADLINE_TIMER = pytest.StashKey[threading.Timer]()


def pytest_configure(config) -> None:
    def expire() -> None:
        # Out of pytest's output capture, so the tracebacks reach the CI log.
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)
        print(f"\nThe test run passed its deadline of {DEADLINE:g} s; threads:", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)

    config.stash[_DEADLINE_TIMER] = timer = threading.Timer(DEADLINE, expire)
    timer.daemon = True
    timer.start()


def pytest_unconfigure(config) -> None:
    timer = config.stash.get(_DEADLINE_TIMER, None)
    if timer is not None:
        timer.cancel()


def _free_ports(host: str, count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind((host, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


#: Another loopback "host" (tests/security/test_outbound.py): the session server lets webhooks
#: reach only ``http://HOOK_HOST:HOOK_PORT/hooks`` on it, and its judge ``grader`` listens on
#: ``JUDGE_PORT`` there.
HOOK_HOST = "127.0.0.2"
HOOK_PORT, JUDGE_PORT = _free_ports(HOOK_HOST, 2)
#: The judge's key: in the server's environment only (``[judges.grader] api_key_env``).
JUDGE_KEY = "judge-secret-5d1e"
#: The session engine's private forget set (tests/security/test_unlearning_secrecy.py): its name
#: must never reach a client, and its reports show the gate's decision only.
FORGET_VAULT = Path(__file__).parent / "data" / "forget_vault.jsonl"
#: The capitals set with a trained gate (decoding/unlearning/classifier.py) and its negatives.
TRAINED_SET = "capitals_trained"
RETAIN_CAPITALS = Path(__file__).parent / "data" / "retain_capitals.txt"
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


def trained_copy(folder: Path) -> str:
    """A private copy of the capitals set with its gate fitted beside it (`corrigo unlearning
    fit-gate`, on tests/data/retain_capitals.txt as negatives)."""
    folder.mkdir()
    path = private_copy(FORGET_CAPITALS, folder)
    fit_files(Path(path), [RETAIN_CAPITALS], minilm(), seed=0)
    return path


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
                    "refusal": FORGET_REFUSAL,
                    "abstention": FORGET_ABSTENTION,
                },
                # Private: the defaults (a fixed threshold, decision-only reports, no name).
                "vault": {"path": private_copy(FORGET_VAULT, tmp)},
                # The capitals set again, with a trained gate beside it
                # (tests/integration/test_unlearning.py).
                TRAINED_SET: {
                    "path": trained_copy(tmp / "trained"),
                    "public_name": True,
                    "report_detail": True,
                    # A range the cosine gate would allow; the trained gate refuses a move.
                    "min_threshold": 0.3,
                    "max_threshold": 0.9,
                },
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
                "url_prefixes": ["http://127.0.0.1:", f"http://{HOOK_HOST}:{HOOK_PORT}/hooks"],
                "keepalive_seconds": 0.5,
            },
            # Requests must name this host (tests/security/test_browser_identity.py).
            "server": {"trusted_hosts": ["127.0.0.1"]},
            # A judge holding a server-side key (tests/security/test_outbound.py).
            "judges.grader": {
                "url": f"http://{HOOK_HOST}:{JUDGE_PORT}/v1",
                "model": "grader",
                "api_key_env": "GRADER_API_KEY",
            },
        },
    )
    server = start_server(
        config,
        tmp / "server.log",
        probe_during_startup={"models": "/v1/models", "ready": "/ready"},
        # Tool calls under unlearning (tests/integration/test_composition_matrix.py), with
        # tool_choice "required"/named as a JSON schema of the calls.
        env={"GRADER_API_KEY": JUDGE_KEY, "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"},
        flags=["--tool-call-parser", "hermes", "--enable-auto-tool-choice"],
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
