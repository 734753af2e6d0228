"""Every error path answers with an OpenAI error object and the right status."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from ..conftest import API_KEY, SERVED_MODEL

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "Hi"}]


def assert_error(response: httpx.Response, status: int, *, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def chat(http, body, **kwargs):
    return http.post("/v1/chat/completions", json=body, **kwargs)


def test_malformed_json_is_400(http):
    r = http.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert_error(r, 400, code="invalid_json")
    r = http.post(
        "/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, code="invalid_json")


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1), ("temperature", "hot"), ("max_tokens", -5), ("top_p", 2.0), ("n", 0)],
)
def test_bad_parameter_is_400_naming_it(http, field, value):
    error = assert_error(
        chat(http, {"model": SERVED_MODEL, "messages": MESSAGES, field: value}), 400, param=field
    )
    assert error["type"] == "invalid_request_error"


def test_missing_messages_is_400_naming_it(http):
    assert_error(chat(http, {"model": SERVED_MODEL}), 400, param="messages")


def test_prompt_longer_than_context_is_400(http, client):
    long_prompt = "word " * 3000  # > max_model_len 2048 in the test engine
    r = chat(http, {"model": SERVED_MODEL, "messages": [{"role": "user", "content": long_prompt}]})
    assert_error(r, 400, param="messages", code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=SERVED_MODEL, prompt=long_prompt, max_tokens=4)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"


def test_unknown_model_is_404(http, client):
    assert_error(
        chat(http, {"model": "gpt-17", "messages": MESSAGES}),
        404,
        param="model",
        code="model_not_found",
    )
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-17", prompt="x", max_tokens=1)


def test_engine_not_ready_was_503_during_startup(live_server):
    for name in ("models", "ready"):
        r = live_server.during_startup[name]
        assert_error(r, 503, code="engine_not_ready")
        assert r.headers["retry-after"]


@pytest.mark.parametrize(
    ("correction", "param", "phrase"),
    [
        ({"nonsense": 1}, "correction.nonsense", "Unknown field"),
        (
            {"copilot": {"name": "x"}},
            "correction.copilot.name",
            "unknown copilot 'x' for the served model (copilots declared for it: none)",
        ),
        (
            {"proxy_tuning": {"expert": "x", "anti_expert": "y"}},
            "correction.proxy_tuning.expert",
            "unknown auxiliary model 'x' (declared: none)",
        ),
        ({"refinement": {}}, "correction.refinement.verifier", "Field required"),
        ([1, 2], "correction", "must be an object"),
    ],
)
def test_bad_correction_is_400_naming_the_field(client, correction, param, phrase):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=SERVED_MODEL,
            messages=MESSAGES,
            max_tokens=2,
            extra_body={"correction": correction},
        )
    assert err.value.param == param and phrase in err.value.message


def test_reserved_engine_key_cannot_be_smuggled(http):
    body = {"model": SERVED_MODEL, "messages": MESSAGES, "vllm_xargs": {"corrigo": "{}"}}
    assert_error(chat(http, body), 400, param="vllm_xargs.corrigo")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer"},
    ],
)
def test_missing_or_wrong_key_is_401(live_server, headers):
    with httpx.Client(base_url=live_server.base_url) as anon:
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/completions"),
        ]:
            r = anon.request(
                method, path, headers=headers, json={"model": SERVED_MODEL, "prompt": "x"}
            )
            error = assert_error(r, 401, code="invalid_api_key")
            assert error["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"


def test_any_configured_key_works_and_health_stays_open(live_server):
    with httpx.Client(base_url=live_server.base_url) as anon:
        assert anon.get("/health").status_code == 200
        assert (
            anon.get("/v1/models", headers={"Authorization": "Bearer second-key"}).status_code
            == 200
        )


def test_sdk_with_wrong_key_raises_authentication_error(live_server):
    from openai import OpenAI

    with (
        OpenAI(base_url=f"{live_server.base_url}/v1", api_key="nope", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()


def test_body_over_the_limit_is_413(http):
    big = json.dumps({"model": SERVED_MODEL, "prompt": "x" * 1_100_000})
    r = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert_error(r, 413, code="request_too_large")


def test_n_over_the_cap_is_400(http):
    assert_error(chat(http, {"model": SERVED_MODEL, "messages": MESSAGES, "n": 5}), 400, param="n")


def test_unknown_route_is_an_openai_error(http):
    assert_error(http.get("/v1/nope"), 404)


def test_server_is_healthy_after_all_that(client):
    r = client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, max_tokens=2)
    assert r.choices[0].message.content is not None


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_beam_search_with_a_per_step_correction_is_refused_naming_the_conflict(http, path):
    # vLLM's beam search drops vllm_xargs: served, the correction would silently not run while
    # the report claimed it.
    prompt = {"messages": MESSAGES} if "chat" in path else {"prompt": "Hi"}
    body = {
        "model": SERVED_MODEL,
        **prompt,
        "max_tokens": 2,
        "use_beam_search": True,
        "n": 2,
        "correction": {"unlearning": {"forget_set": "capitals"}},
    }
    error = assert_error(
        http.post(path, json=body), 400, param="use_beam_search", code="unsupported_combination"
    )
    assert "correction" in error["message"].lower()
    del body["correction"]  # beam search alone is vLLM's, served as by `vllm serve`
    assert http.post(path, json=body).status_code == 200
