"""Proof of exactness: proxy-tuned greedy decoding through the server equals a reference that
steps the base, expert and anti-expert transformers models in lockstep with

    s = s_base + sum_k alpha * w_k * (s_expert_k - s_anti_k)

for a mixed batch (plain and proxy-tuned requests, different alphas, pairs, streaming, n=2)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from . import tiny
from .tiny import completion

pytestmark = pytest.mark.engine

STEPS = 10
PROMPTS = [[1, 504, 3458, 314], [1, 2683, 28, 940, 253, 1523], [1, 11234]]


@pytest.fixture(scope="module")
def trio(tiny_server, tiny_models):
    """The shared tiny server (tests/integration/conftest.py) and the transformers models."""
    return tiny_server, tiny_models[0]


def reference(models, prompt: list[int], coefficients: dict[str, float]) -> list[int]:
    """Greedy decoding with the three models stepped in lockstep (no KV cache: plain, slow,
    obviously right)."""
    tokens = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(STEPS):
            ids = torch.tensor([tokens])
            scores = models["base"](input_ids=ids).logits[0, -1].clone()
            for name, c in coefficients.items():
                scores += c * models[name](input_ids=ids).logits[0, -1][: scores.shape[0]]
            top = torch.topk(scores, 2).values
            assert top[0] - top[1] > 1e-3, "near-tie: the comparison would hinge on rounding"
            token = int(scores.argmax())
            out.append(token)
            tokens.append(token)
    return out


CASES = {
    "plain": (None, {}),
    "alpha 1": ({"expert": "expert", "anti_expert": "anti"}, {"expert": 1.0, "anti": -1.0}),
    "alpha 0.5": (
        {"expert": "expert", "anti_expert": "anti", "alpha": 0.5},
        {"expert": 0.5, "anti": -0.5},
    ),
    "pairs": (
        {
            "pairs": [
                {"expert": "expert", "anti_expert": "anti", "weight": 2.0},
                {"expert": "anti", "anti_expert": "expert", "weight": 0.5},
            ],
            "alpha": 0.8,
        },
        {"expert": 1.2, "anti": -1.2},
    ),
    "same model": ({"expert": "expert", "anti_expert": "expert", "alpha": 3.0}, {}),
    "alpha 0": ({"expert": "expert", "anti_expert": "anti", "alpha": 0.0}, {}),
}


def test_mixed_batch_matches_lockstep_reference(trio):
    server, models = trio
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)

    def run(case: str, prompt: list[int], stream: bool, n: int) -> list[list[int]]:
        correction = CASES[case][0]
        correction = None if correction is None else {"proxy_tuning": correction}
        return completion(client, prompt, STEPS, correction, stream=stream, n=n)[0]

    jobs = [
        (case, prompt, stream, n)
        for i, case in enumerate(CASES)
        for prompt, stream, n in [(PROMPTS[i % 3], False, 1), (PROMPTS[(i + 1) % 3], True, 2)]
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:  # all in flight together: one mixed batch
        results = list(pool.map(lambda job: run(*job), jobs))

    for (case, prompt, stream, n), got in zip(jobs, results, strict=True):
        expected = reference(models, prompt, CASES[case][1])
        assert got == [expected] * n, f"{case} stream={stream} n={n}"
    # The shift is strong enough to change the output, so the comparison above has teeth.
    assert all(
        reference(models, p, {}) != reference(models, p, CASES["alpha 1"][1]) for p in PROMPTS
    )


def test_bad_specs_are_400_and_leave_the_batch_alone(trio):
    server, models = trio
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    bad = {
        "correction.proxy_tuning.expert": {"expert": "gpt-5", "anti_expert": "anti"},
        "correction.proxy_tuning.alpha": {
            "expert": "expert",
            "anti_expert": "anti",
            "alpha": "high",
        },
        "correction.proxy_tuning": {
            "expert": "expert",
            "anti_expert": "anti",
            "pairs": [{"expert": "expert", "anti_expert": "anti"}],
        },
    }
    good = {"expert": "expert", "anti_expert": "anti"}
    prompt = PROMPTS[0]
    extra = {"ignore_eos": True, "return_token_ids": True, "correction": {"proxy_tuning": good}}
    stream = client.completions.create(
        model="base", prompt=prompt, max_tokens=STEPS, temperature=0, stream=True, extra_body=extra
    )
    tokens = list(next(iter(stream)).choices[0].model_extra["token_ids"])  # it is in the batch now
    for param, correction in bad.items():
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(
                model="base",
                prompt=prompt,
                max_tokens=2,
                extra_body={"correction": {"proxy_tuning": correction}},
            )
        assert err.value.param == param
    for chunk in stream:
        tokens += chunk.choices[0].model_extra.get("token_ids") or [] if chunk.choices else []
    assert tokens == reference(models, prompt, CASES["alpha 1"][1])

    metrics = httpx.get(f"{server.base_url}/metrics").text
    counts = {
        s.labels["plugin"]: s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "corrigo_plugin_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counts["proxy_tuning"] >= 1
    step_counts = [
        s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "corrigo_plugin_step_seconds"
        for s in family.samples
        if s.name == "corrigo_plugin_step_seconds_count" and s.labels["plugin"] == "proxy_tuning"
    ]
    assert step_counts and step_counts[0] >= STEPS  # every proxy-tuned step was timed


def test_profile_is_a_model_with_a_default_correction(trio):
    server, models = trio
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    # The served model, its LoRA adapter (the shared server's), then the profile.
    assert [m.id for m in client.models.list().data] == ["base", tiny.LORA_MODEL, "tuned"]
    prompt = PROMPTS[1]
    extra = {"ignore_eos": True, "return_token_ids": True}
    kwargs = dict(model="tuned", prompt=prompt, max_tokens=STEPS, temperature=0)

    r = client.completions.create(**kwargs, extra_body=extra)  # no extra body fields needed
    assert r.model == "tuned" and r.model_extra["correction"] == {"plugins": ["proxy_tuning"]}
    assert r.choices[0].model_extra["token_ids"] == reference(models, prompt, CASES["alpha 1"][1])

    # Request fields override the profile's defaults, key by key.
    override = {**extra, "correction": {"proxy_tuning": {"alpha": 0.5}}}
    r = client.completions.create(**kwargs, extra_body=override)
    assert r.choices[0].model_extra["token_ids"] == reference(models, prompt, CASES["alpha 0.5"][1])

    chunks = list(client.completions.create(**kwargs, stream=True, extra_body=extra))
    assert {c.model for c in chunks} == {"tuned"}
