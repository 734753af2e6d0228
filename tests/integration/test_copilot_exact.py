"""Copilot rectification end to end: ``corrigo copilot train`` trains a copilot on a tiny
random pilot's mistake log in seconds (its RMSE falls), and greedy decoding through the server
with it equals a reference that steps the pilot and the copilot (plain transformers forwards,
no cache) under the fusion rule, for a mixed batch; bad specs are 400 naming the field, a
copilot bound to another pilot stops the server at start-up, and each response reports the
mean and max |rectification|."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import torch
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from adapters.copilot_training import render_prompt
from adapters.default_model import ensure_default_model
from decoding.copilot.fusion import RectificationFusion
from decoding.copilot.model import PilotFeatures

from ..support import REPO, make_tiny_llama, write_config
from .tiny import TRAIN_STEPS, completion

pytestmark = pytest.mark.engine

STEPS = 8
PROMPTS = [[1, 504, 3458, 314], [1, 2683, 28, 940, 253, 1523], [1, 11234]]


@pytest.fixture(scope="module")
def served(tiny_server, tiny_deployment, tiny_models):
    """The shared tiny server (tests/integration/conftest.py): its ``base`` is the pilot."""
    models, copilot = tiny_models
    return tiny_server, models["base"], copilot, tiny_deployment


def reference(pilot, copilot, prompt, lam, space):
    """Greedy tokens and per-step ``|lambda f|`` (mean, max) with the pilot and the copilot
    re-run on the whole stream each step: the copilot reads the pilot's top-k at every
    position from the last prompt token on, tokens alone before."""
    tokens, features, out, means, maxes = list(prompt), [], [], [], []
    k = copilot.top_k
    with torch.no_grad():
        for _ in range(STEPS):
            scores = pilot(input_ids=torch.tensor([tokens])).logits[0, -1]
            features.append(PilotFeatures.from_logits(scores, k))
            ids = torch.zeros(1, len(tokens), k, dtype=torch.long)
            probs = torch.zeros(1, len(tokens), k)
            for j, feature in enumerate(features):
                ids[0, len(prompt) - 1 + j] = feature.ids
                probs[0, len(prompt) - 1 + j] = feature.probs
            f = copilot(torch.tensor([tokens]), ids, probs).logits[0, -1]
            fused = RectificationFusion(space)(scores[None], f[None], torch.tensor([lam]))[0]
            top = fused.topk(2).values
            assert top[0] - top[1] > 1e-3, "near-tie: the comparison would hinge on rounding"
            out.append(int(fused.argmax()))
            tokens.append(out[-1])
            means.append(float((lam * f).abs().mean()))
            maxes.append(float((lam * f).abs().max()))
    return out, float(np.mean(means)), max(maxes)


#: case -> (correction.copilot or None for plain decoding, lambda, space of the reference).
CASES = {
    "plain": (None, 0.0, "logits"),
    "checkpoint defaults": ({"name": "fix"}, 1.0, "probs"),
    "probs 0.5": ({"name": "fix", "lambda": 0.5}, 0.5, "probs"),
    "logits 40": ({"name": "fix", "lambda": 40, "space": "logits"}, 40.0, "logits"),
}


def test_training_lowers_the_rmse(served):
    *_, deployment = served
    losses = [json.loads(line)["loss"] for line in (deployment.copilot / "train_log.jsonl").open()]
    assert len(losses) == TRAIN_STEPS
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:3])


def test_mixed_batch_matches_the_fused_reference_and_reports_the_rectification(served):
    server, pilot, copilot, _ = served
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)

    def run(case, prompt, stream, n):
        correction = CASES[case][0]
        correction = None if correction is None else {"copilot": correction}
        return completion(client, prompt, STEPS, correction, stream=stream, n=n)

    jobs = [
        (case, prompt, stream, n)
        for i, case in enumerate(CASES)
        for prompt, stream, n in [(PROMPTS[i % 3], False, 1), (PROMPTS[(i + 1) % 3], True, 2)]
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:  # all in flight together: one mixed batch
        results = list(pool.map(lambda job: run(*job), jobs))

    for (case, prompt, stream, n), (got, report) in zip(jobs, results, strict=True):
        _, lam, space = CASES[case]
        expected, mean, top = reference(pilot, copilot, prompt, lam, space)
        assert got == [expected] * n, f"{case} stream={stream} n={n}"
        if CASES[case][0] is None:
            assert report is None
            continue
        figures = report["copilot"]
        assert figures["steps"] == STEPS * n  # every choice of the request, every step
        assert figures["mean_abs_rectification"] == pytest.approx(mean, rel=1e-3, abs=1e-6)
        assert figures["max_abs_rectification"] == pytest.approx(top, rel=1e-3, abs=1e-6)
    # The rectification changes the output, so the comparison above has teeth.
    assert any(
        reference(pilot, copilot, p, 0.0, "logits")[0]
        != reference(pilot, copilot, p, 1.0, "probs")[0]
        for p in PROMPTS
    )


def test_chat_prompts_are_rendered_as_the_trainer_renders_them(served):
    server, pilot, copilot, deployment = served
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    r = client.chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "Add 5 and 5."}],
        max_tokens=STEPS,
        temperature=0,
        extra_body={
            "ignore_eos": True,
            "return_token_ids": True,
            "correction": {"copilot": {"name": "fix"}},
        },
    )
    prompt = r.model_extra["prompt_token_ids"]
    assert prompt == render_prompt(
        AutoTokenizer.from_pretrained(deployment.paths["base"]), "Add 5 and 5."
    )
    assert (
        r.choices[0].model_extra["token_ids"] == reference(pilot, copilot, prompt, 1.0, "probs")[0]
    )


@pytest.mark.parametrize(
    ("copilot", "param"),
    [
        ({"name": "nope"}, "correction.copilot.name"),
        ({"lambda": 1}, "correction.copilot.name"),
        ({"name": "fix", "lambda": "high"}, "correction.copilot.lambda"),
        ({"name": "fix", "lambda": -2}, "correction.copilot.lambda"),
        ({"name": "fix", "space": "hidden"}, "correction.copilot.space"),
        ({"name": "fix", "temperature": 1}, "correction.copilot.temperature"),
    ],
)
def test_bad_specs_are_400_naming_the_field(served, copilot, param):
    server, *_ = served
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="base", prompt="x", max_tokens=2, extra_body={"correction": {"copilot": copilot}}
        )
    assert err.value.param == param


def test_every_copilot_step_is_timed(served):
    server, *_ = served
    metrics = httpx.get(f"{server.base_url}/metrics").text
    counts = [
        s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "corrigo_plugin_step_seconds"
        for s in family.samples
        if s.name == "corrigo_plugin_step_seconds_count" and s.labels["plugin"] == "copilot"
    ]
    assert counts and counts[0] >= STEPS


def test_a_copilot_bound_to_another_pilot_is_refused_at_start_up(served, tmp_path):
    *_, deployment = served
    other = make_tiny_llama(tmp_path / "other", ensure_default_model(), initializer_range=0.1)
    config = write_config(
        tmp_path / "corrigo.toml",
        {"model": {"path": str(other)}, "copilots.fix": {"path": str(deployment.copilot)}},
    )
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "copilots.fix" in run.stderr and "cannot serve the model" in run.stderr
    assert "config differs" in run.stderr
