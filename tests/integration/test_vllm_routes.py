"""What `vllm serve` routes beyond chat and completions, through corrigo on the shared tiny
server (tests/integration/conftest.py): /v1/responses with and without corrections (streamed
too), /tokenize, /detokenize, /version, LoRA adapters as model ids (from `--lora-modules`, and
loaded at run time) with corrections applied to them, and a `[frontend]` setting reaching vLLM.

Corrections are checked by their effect: the toy correction tests/integration/delayed_bias/
forces one token from a given step on, so the corrected output is the plain one up to that
step, then that token; its report's counts come from the engine's steps."""

from __future__ import annotations

import copy

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from adapters.vllm_compat import VLLM_VERSION
from decoding.spec import WIRE_KEY

from . import tiny
from .tiny import completion

pytestmark = pytest.mark.engine

STEPS = 8
#: The step the delayed bias starts at.
FROM = 3
PROMPT = [1, 504, 3458, 314]
#: The Responses input, and the chat messages it is rendered from.
INPUT = "Tell me about the sea."
MESSAGES = [{"role": "user", "content": INPUT}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(tiny_server):
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as c:
        yield c


def tokenize(http: httpx.Client, **body) -> list[int]:
    r = http.post("/tokenize", json=body)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def detokenize(http: httpx.Client, tokens: list[int]) -> str:
    r = http.post("/detokenize", json={"tokens": tokens})
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


def bias(token: int) -> dict:
    return {"delayed_bias": {"token": token, "from_step": FROM, "bias": 1000.0}}


def metric(http: httpx.Client, endpoint: str, status: str) -> float:
    text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(
        s.value
        for s in families["corrigo_requests"].samples
        if s.name == "corrigo_requests_total"
        and s.labels["endpoint"] == endpoint
        and s.labels["status"] == status
    )


def test_tokenize_and_detokenize_round_trip(http):
    before = metric(http, "tokenize", "200")
    ids = tokenize(http, prompt="Hello world", add_special_tokens=False)
    assert ids and all(isinstance(i, int) for i in ids)
    assert detokenize(http, ids) == "Hello world"
    # A profile tokenizes as its served model; a LoRA adapter is a model id of its own.
    assert tokenize(http, model="tuned", prompt="Hello world", add_special_tokens=False) == ids
    assert (
        tokenize(http, model=tiny.LORA_MODEL, prompt="Hello world", add_special_tokens=False) == ids
    )
    assert metric(http, "tokenize", "200") == before + 3
    # Chat messages, as the chat template renders them: the prompt ends with the user's text.
    chat = tokenize(http, messages=MESSAGES)
    assert INPUT in detokenize(http, chat) and len(chat) > len(ids)


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/tokenize", {"prompt": 5}, 400, None),
        ("/tokenize", {}, 400, None),
        ("/tokenize", {"messages": "not a list"}, 400, None),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens.0"),
        ("/detokenize", {"tokens": [10**12]}, 400, None),
        ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model"),
    ],
)
def test_bad_tokenize_requests_are_4xx(http, path, body, status, param):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    r = http.post(path, content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_version(http):
    version = http.get("/version").json()
    assert version["version"] == VLLM_VERSION and isinstance(version["corrigo"], str)


def test_frontend_settings_reach_vllm(client):
    # [frontend] enable_prompt_tokens_details = true (the tiny server's config).
    r = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=1)
    assert r.usage.prompt_tokens_details is not None
    # [frontend] enable_force_include_usage = true: a stream ends with usage unasked.
    chunks = list(
        client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=2, stream=True)
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def _plain_responses_ids(client, http) -> list[int]:
    """The tokens /v1/responses generates for INPUT, from /v1/completions on the same prompt
    (Responses renders its input as a chat, as /tokenize renders MESSAGES)."""
    (ids,), _ = completion(client, tokenize(http, messages=MESSAGES), STEPS)
    return ids


@pytest.mark.parametrize("stream", [False, True])
def test_responses_with_and_without_a_correction(client, http, stream):
    plain_ids = _plain_responses_ids(client, http)
    token = next(
        t
        for t in tokenize(http, prompt=" ocean zebra", add_special_tokens=False)
        if t not in plain_ids
    )
    before = metric(http, "responses", "200")

    def respond(correction=None):
        extra = {"ignore_eos": True}
        if correction is not None:
            extra["correction"] = correction
        kwargs = dict(
            model="base", input=INPUT, max_output_tokens=STEPS, temperature=0, extra_body=extra
        )
        if not stream:
            r = client.responses.create(**kwargs)
            return r.output_text, r.usage.output_tokens, r.model_extra.get("correction")
        text, final = "", None
        for event in client.responses.create(stream=True, **kwargs):
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.completed":
                final = event.response
        assert final is not None and final.output_text == text
        return text, final.usage.output_tokens, final.model_extra.get("correction")

    text, tokens, report = respond()
    assert (text, tokens, report) == (detokenize(http, plain_ids), STEPS, None)
    text, tokens, report = respond(bias(token))
    assert text == detokenize(http, plain_ids[:FROM] + [token] * (STEPS - FROM))
    assert tokens == STEPS
    assert report == {
        "plugins": ["delayed_bias"],
        "delayed_bias": {"steps": STEPS, "boosted": STEPS - FROM},
    }
    assert metric(http, "responses", "200") == before + 2


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        (
            {"correction": {"refinement": {"verifier": {"type": "regex", "pattern": "x"}}}},
            "correction.refinement",
        ),
        ({"correction": {"delayed_bias": {"token": -1}}}, "correction.delayed_bias.token"),
        ({"vllm_xargs": {WIRE_KEY: "x"}}, f"vllm_xargs.{WIRE_KEY}"),
    ],
)
def test_responses_refuses_what_it_cannot_serve_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="base", input=INPUT, max_output_tokens=2, extra_body=extra)
    if param is not None:
        assert err.value.body["param"] == param


def test_responses_profile_and_unknown_model(client):
    r = client.responses.create(model="tuned", input=INPUT, max_output_tokens=2, temperature=0)
    assert r.model == "tuned" and r.model_extra["correction"]["plugins"] == ["proxy_tuning"]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input=INPUT, max_output_tokens=2)


def reference(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    """Greedy decoding with transformers (no KV cache: plain, obviously right)."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(STEPS):
            scores = model(input_ids=torch.tensor([tokens])).logits[0, -1]
            top = torch.topk(scores, 2).values
            assert top[0] - top[1] > 1e-3, "near-tie: the comparison would hinge on rounding"
            tokens.append(int(scores.argmax()))
    return tokens[len(prompt) :]


@pytest.fixture(scope="module")
def lora_reference(tiny_deployment, tiny_models):
    """Greedy ids of ``base`` and of ``base`` with the adapter merged into its weights."""
    base = tiny_models[0]["base"]
    merged = tiny.merge_lora(copy.deepcopy(base), tiny_deployment.lora)
    return reference(base, PROMPT), reference(merged, PROMPT)


def test_a_lora_adapter_is_a_served_model_and_exact(client, lora_reference):
    base_ids, lora_ids = lora_reference
    assert base_ids != lora_ids  # the adapter changes the greedy output
    models = {m.id: m for m in client.models.list()}
    assert models[tiny.LORA_MODEL].model_extra["parent"] == "base"
    for stream in (False, True):
        assert completion(client, PROMPT, STEPS, model=tiny.LORA_MODEL, stream=stream)[0] == [
            lora_ids
        ]
    assert completion(client, PROMPT, STEPS)[0] == [base_ids]


@pytest.mark.parametrize("stream", [False, True])
def test_corrections_apply_on_a_lora_adapter(client, lora_reference, stream):
    _, lora_ids = lora_reference
    token = next(t for t in range(100, 200) if t not in lora_ids)
    (ids,), report = completion(
        client, PROMPT, STEPS, bias(token), stream=stream, model=tiny.LORA_MODEL
    )
    assert ids == lora_ids[:FROM] + [token] * (STEPS - FROM)
    assert report["delayed_bias"] == {"steps": STEPS, "boosted": STEPS - FROM}
    # ... and on the Responses route too.
    r = client.responses.create(
        model=tiny.LORA_MODEL,
        input=INPUT,
        max_output_tokens=STEPS,
        temperature=0,
        extra_body={"ignore_eos": True, "correction": bias(token)},
    )
    assert r.model == tiny.LORA_MODEL
    assert r.model_extra["correction"]["delayed_bias"] == {"steps": STEPS, "boosted": STEPS - FROM}


def test_lora_adapters_load_and_unload_at_run_time(
    client, http, tiny_deployment, lora_reference, tmp_path
):
    _, lora_ids = lora_reference
    name, path = "loaded-lora", str(tiny_deployment.lora)
    # An adapter of a rank above the server's --max-lora-rank: the engine cannot load it.
    too_wide = tiny.make_lora(tmp_path / "wide", tiny_deployment.paths["base"], rank=16)
    before = metric(http, "load_lora_adapter", "200")
    r = http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
    assert r.status_code == 200, r.text
    try:
        assert metric(http, "load_lora_adapter", "200") == before + 1
        assert name in {m.id for m in client.models.list()}
        assert completion(client, PROMPT, STEPS, model=name)[0] == [lora_ids]
        token = next(t for t in range(100, 200) if t not in lora_ids)
        (ids,), _ = completion(client, PROMPT, STEPS, bias(token), model=name)
        assert ids == lora_ids[:FROM] + [token] * (STEPS - FROM)
        for body, status, param in [
            ({"lora_name": name, "lora_path": path}, 400, None),  # loaded already
            ({"lora_name": "base", "lora_path": path}, 400, "lora_name"),  # the served model
            ({"lora_name": "tuned", "lora_path": path}, 400, "lora_name"),  # a profile
            ({"lora_name": "x", "lora_path": "/no/such/adapter"}, 404, None),
            ({"lora_name": "x", "lora_path": str(tiny_deployment.paths["base"])}, 404, None),
            ({"lora_name": "x", "lora_path": str(too_wide)}, 400, "lora_path"),
            ({"lora_name": "x"}, 400, "lora_path"),
        ]:
            r = http.post("/v1/load_lora_adapter", json=body)
            assert r.status_code == status, (body, r.text)
            if param is not None:
                assert r.json()["error"]["param"] == param
    finally:
        r = http.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert r.status_code == 200, r.text
    assert name not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        completion(client, PROMPT, 2, model=name)
    r = http.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert r.status_code == 404 and r.json()["error"]["message"]
