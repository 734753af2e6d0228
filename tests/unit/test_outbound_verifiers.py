"""Judge credentials stay server-side; verifier failures reach clients as one generic message."""

from __future__ import annotations

import asyncio
import logging

import pytest

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.refinement import Services, VerifyContext, build_verifier, parse_verifier
from decoding.refinement.generation import Generation
from decoding.refinement.params import RefinementParams
from decoding.refinement.run import RefinementRun
from server.config import ConfigError, JudgeConfig, load_config
from server.refinement.remote_model import JudgeConfigError, configured_judges

CONTEXT = {"verifier_judges": frozenset({"grader"}), "verifier_url_prefixes": ["http://127.0.0.1:"]}
MESSAGES = [{"role": "user", "content": "What is 6 * 7?"}]


def judge(**spec):
    verifier = {"type": "judge", **spec}
    return parse_correction({"refinement": {"verifier": verifier}}, context=CONTEXT)


@pytest.mark.parametrize("name", ["HOME", "PATH", "CORRIGO_NO_SUCH_VARIABLE"])
def test_a_client_naming_an_environment_variable_is_refused_alike(name):
    with pytest.raises(CorrectionError) as err:
        judge(url="http://127.0.0.1:9/v1", api_key_env=name)
    assert err.value.param == "correction.refinement.verifier.api_key_env"
    assert name not in err.value.message


def test_judge_names_are_checked_and_exclusive_with_url_and_model():
    assert judge(judge="grader").refinement.verifier["judge"] == "grader"
    with pytest.raises(CorrectionError) as err:
        judge(judge="other")
    assert err.value.param == "correction.refinement.verifier.judge"
    assert "grader" in err.value.message
    for extra in ({"url": "http://127.0.0.1:9/v1"}, {"model": "x"}):
        with pytest.raises(CorrectionError) as err:
            judge(judge="grader", **extra)
        assert err.value.param == f"correction.refinement.verifier.{next(iter(extra))}"
    with pytest.raises(CorrectionError) as err:
        parse_correction(
            {"refinement": {"verifier": {"type": "judge", "judge": "grader"}}},
            context={"verifier_judges": frozenset()},
        )
    assert "declares no judges" in err.value.message


def test_a_named_judge_uses_the_servers_client_for_it():
    calls = []

    async def grader(messages, *, n=1, max_tokens=None, temperature=None):
        calls.append(messages)
        return [Generation("CORRECT", 1)]

    verifier = build_verifier(parse_verifier({"type": "judge", "judge": "grader"}))
    ctx = VerifyContext(MESSAGES, Services(judges={"grader": grader}))
    assert asyncio.run(verifier.verify("42", ctx)).accepted and len(calls) == 1


class _Broken:
    name = "webhook"
    exact = False

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def verify(self, candidate, ctx):
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("[Errno 111] Connection refused to 10.0.0.7:6379"),
        RuntimeError("environment variable SECRET_TOKEN is not set on the server"),
        TimeoutError(),
    ],
)
def test_a_failing_verifier_reports_one_generic_message_and_logs_the_cause(exc, caplog):
    params = RefinementParams.model_validate({"verifier": {"type": "regex", "pattern": "x"}})
    ctx = VerifyContext(MESSAGES, request_id="req-17")

    async def generate(messages, **kw):
        return [Generation("42", 1)]

    run = RefinementRun(params, MESSAGES, generate, _Broken(exc), ctx)
    with caplog.at_level(logging.WARNING, logger="decoding.refinement.run"):
        verdict = asyncio.run(run.verify("42"))
    assert not verdict.accepted
    assert verdict.details == {
        "error": "the webhook verifier failed; see the server log for request req-17"
    }
    assert "req-17" in caplog.text and type(exc).__name__ in caplog.text
    assert str(exc) in caplog.text


def test_a_judges_missing_key_is_a_startup_error_naming_the_judge():
    overrides = {"judges.grader.url": "http://127.0.0.1:9/v1", "judges.grader.api_key_env": "K_X"}
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides, environ={})
    assert "judges.grader.api_key_env" in str(err.value) and "K_X" in str(err.value)
    config = load_config(overrides=overrides, environ={"K_X": "s3cret"})
    assert set(configured_judges(config.judges, {"K_X": "s3cret"})) == {"grader"}
    with pytest.raises(JudgeConfigError, match="judges.grader"):
        configured_judges(config.judges, {})
    with pytest.raises(ConfigError, match="judges.bad.url"):
        load_config(overrides={"judges.bad.url": "http://u@127.0.0.1/v1"}, environ={})
    assert JudgeConfig(url="http://127.0.0.1:9/v1").api_key_env is None
