"""Corrections across ranks and processes.

Tensor parallelism 2 on the CPU engine (two worker processes, one core each): proxy-tuned and
copilot-rectified greedy decoding through the server equals the single-process references of
tests/integration/test_proxy_tuning_exact.py and test_copilot_exact.py for a mixed batch, and
each figure is counted once (report steps and ``corrigo_plugin_step_seconds`` equal the
generated tokens, not twice that). Last, on the same server (saving an engine start): a dead
engine-core process turns /ready and every request into a quick 503, and stopping the server
then leaves no process behind, the tensor-parallel workers included.

Ray: vLLM's Ray executor refuses the CPU platform ("current platform cpu does not support ray":
``CpuPlatform`` has no ``ray_device_key``, vllm/platforms/cpu.py; corrigo refuses the setting at
start-up, tests/unit/test_engine_args.py), so no Ray-backed engine can run on this machine. What Ray adds to
corrigo's side is tested instead: a worker of a Ray cluster the test starts, given only the
vLLM config (shipped by Ray as vLLM's Ray executor ships it), builds the logits processor from
the manifest in it, corrects the logits exactly, and its figures reach the server's report
channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import torch
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from adapters.engine import ServedModel, engine_args
from adapters.engine_channel import FigureReceiver
from adapters.manifest import DeploymentManifest, ModelEntry
from adapters.request_reports import ReportBook

from ..support import REPO, start_server, write_config
from .test_copilot_exact import STEPS as COPILOT_STEPS
from .test_copilot_exact import reference as copilot_reference
from .test_proxy_tuning_exact import PROMPTS
from .test_proxy_tuning_exact import STEPS as PROXY_STEPS
from .test_proxy_tuning_exact import reference as proxy_reference
from .test_shutdown import Stream, until
from .tiny import ENGINE, completion

pytestmark = pytest.mark.engine

#: Two ranks, one core each (vLLM's CPU workers pin their threads to these cores).
TP2 = {**ENGINE, "tensor_parallel_size": 2, "distributed_executor_backend": "mp"}
TP2_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
PROXY = {"expert": "expert", "anti_expert": "anti"}
PROXY_COEFFICIENTS = {"expert": 1.0, "anti": -1.0}


@pytest.fixture(scope="module")
def models(tiny_deployment, tiny_models):
    """The shared tiny deployment (tests/integration/tiny.py): ``(folder, model folders,
    transformers models, copilot model)``; the TP=2 server's files go in its folder."""
    loaded, copilot = tiny_models
    return tiny_deployment.folder, tiny_deployment.paths, loaded, copilot


@pytest.fixture(scope="module")
def tp2(models):
    tmp, paths, *_ = models
    config = write_config(
        tmp / "tp2.toml",
        {
            "model": {"path": str(paths["base"])},
            "engine": TP2,
            "aux_models.expert": {"path": str(paths["expert"])},
            "aux_models.anti": {"path": str(paths["anti"])},
            "copilots.fix": {"path": str(tmp / "fix")},  # tiny.build's copilot
        },
    )
    server = start_server(config, tmp / "tp2.log", env=TP2_ENV)
    yield server
    server.stop()


def step_counts(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics").text
    return {
        s.labels["plugin"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "corrigo_plugin_step_seconds"
        for s in family.samples
        if s.name == "corrigo_plugin_step_seconds_count"
    }


def _proxy(models, prompt):
    _, _, loaded, _ = models
    return proxy_reference(loaded, prompt, PROXY_COEFFICIENTS), None


def _copilot(lam, space):
    def ref(models, prompt):
        _, _, loaded, copilot = models
        tokens, mean, top = copilot_reference(loaded["base"], copilot, prompt, lam, space)
        return tokens, (mean, top)

    return ref


#: case -> (correction, max_tokens, reference(models, prompt) -> (tokens, copilot figures)).
CASES = {
    "plain": (None, PROXY_STEPS, lambda models, p: (proxy_reference(models[2], p, {}), None)),
    "proxy": ({"proxy_tuning": PROXY}, PROXY_STEPS, _proxy),
    "copilot": ({"copilot": {"name": "fix"}}, COPILOT_STEPS, _copilot(1.0, "probs")),
    "copilot logits 40": (
        {"copilot": {"name": "fix", "lambda": 40, "space": "logits"}},
        COPILOT_STEPS,
        _copilot(40.0, "logits"),
    ),
}


def test_tp2_mixed_batch_matches_the_single_process_references(models, tp2):
    client = OpenAI(base_url=f"{tp2.base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    jobs = [
        (case, prompt, stream, n)
        for i, case in enumerate(CASES)
        for prompt, stream, n in [(PROMPTS[i % 3], False, 1), (PROMPTS[(i + 1) % 3], True, 2)]
    ]

    def run(job):
        case, prompt, stream, n = job
        correction, steps, _ = CASES[case]
        return completion(client, prompt, steps, correction, stream=stream, n=n)

    with ThreadPoolExecutor(len(jobs)) as pool:  # all in flight together: one mixed batch
        results = list(pool.map(run, jobs))

    references = {}

    def reference(case, prompt):
        if (case, tuple(prompt)) not in references:
            references[case, tuple(prompt)] = CASES[case][2](models, prompt)
        return references[case, tuple(prompt)]

    for (case, prompt, stream, n), (got, report) in zip(jobs, results, strict=True):
        _, steps, _ = CASES[case]
        expected, figures = reference(case, prompt)
        assert got == [expected] * n, f"{case} stream={stream} n={n}"
        if figures is not None:
            assert report["copilot"]["steps"] == steps * n  # once per token, not per rank
            mean, top = figures
            got_mean = report["copilot"]["mean_abs_rectification"]
            assert got_mean == pytest.approx(mean, rel=1e-3, abs=1e-6)
            got_max = report["copilot"]["max_abs_rectification"]
            assert got_max == pytest.approx(top, rel=1e-3, abs=1e-6)
    # Each correction changes these outputs, so the comparisons above have teeth.
    for case in ("proxy", "copilot logits 40"):
        steps = CASES[case][1]
        assert any(reference(case, p)[0] != reference("plain", p)[0][:steps] for p in PROMPTS)


def test_tp2_counts_each_step_once(tp2):
    client = OpenAI(base_url=f"{tp2.base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    before = step_counts(tp2.base_url)
    completion(client, PROMPTS[0], PROXY_STEPS, {"proxy_tuning": PROXY})
    # The copilot's report waits for its steps' figures; the proxy request's came before them
    # on the same channel, so both are in once this returns.
    _, report = completion(client, PROMPTS[1], COPILOT_STEPS, {"copilot": {"name": "fix"}})
    after = step_counts(tp2.base_url)
    assert report["copilot"]["steps"] == COPILOT_STEPS
    assert after["proxy_tuning"] - before.get("proxy_tuning", 0) == PROXY_STEPS
    assert after["copilot"] - before.get("copilot", 0) == COPILOT_STEPS


def corrected_in_a_ray_worker(vllm_config, prompt, wire, ticket, logits):
    """Runs in a Ray worker: the logits processor as vLLM's worker would build it, one step."""
    from adapters.logits_processor import CorrigoLogitsProcessor
    from adapters.request_reports import XARGS_KEY
    from adapters.vllm_compat import BatchUpdate, SamplingParams
    from decoding.spec import WIRE_KEY

    processor = CorrigoLogitsProcessor(vllm_config, torch.device("cpu"), False)
    params = SamplingParams(extra_args={WIRE_KEY: wire, XARGS_KEY: ticket})
    processor.update_state(BatchUpdate(1, removed=[], added=[(0, params, prompt, [])], moved=[]))
    out = processor.apply(logits.clone())
    processor.sender.close()  # flushes the step's figures
    return out, sorted(k for k in os.environ if k.startswith("_CORRIGO"))


def test_a_ray_worker_corrects_from_the_vllm_config_alone(models):
    import ray  # the test extra installs it (pyproject.toml)

    from decoding.correction import parse_correction

    _, paths, loaded, _ = models
    receiver = FigureReceiver()
    try:  # the receiver's socket is closed whatever fails (an open one blocks the GC later)
        manifest = DeploymentManifest(
            aux_models={n: ModelEntry(str(paths[n])) for n in ("expert", "anti")},
            channel=receiver.channel,
        )
        registry = manifest.registry()
        vllm_config = engine_args(
            ServedModel(str(paths["base"]), "base"), ENGINE, manifest
        ).create_engine_config()
        prompt = PROMPTS[1]
        with torch.no_grad():
            ids = torch.tensor([prompt])
            scores = {n: m(input_ids=ids).logits[0, -1] for n, m in loaded.items()}
        expected = scores["base"] + scores["expert"] - scores["anti"]
        book = ReportBook(registry)
        ticket = book.take()
        wire = parse_correction(
            {"proxy_tuning": PROXY},
            registry=registry,
            context=manifest.correction_context(registry),
        )
        ray.init(
            num_cpus=1,
            include_dashboard=False,
            # The worker imports corrigo as an installed node would; nothing else is passed.
            runtime_env={
                "env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), *sys_path_extra()])}
            },
        )
        try:
            remote = ray.remote(corrected_in_a_ray_worker)

            async def run():
                arrived = asyncio.Event()

                def handle(message):
                    book.record(message.rows)
                    if book.steps(ticket):
                        arrived.set()

                listening = asyncio.create_task(receiver.run(handle))
                ref = remote.remote(
                    vllm_config, prompt, wire.to_wire(), ticket, scores["base"][None]
                )
                result = await asyncio.to_thread(ray.get, ref, timeout=600)
                await asyncio.wait_for(arrived.wait(), 60)
                listening.cancel()
                return result

            (out, corrigo_env) = asyncio.run(run())
        finally:
            ray.shutdown()
    finally:
        receiver.close()
    assert corrigo_env == []  # no environment hand-off
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-5)
    assert book.steps(ticket) == 1


def sys_path_extra() -> list[str]:
    """Where this interpreter finds packages installed outside its environment (PYTHONPATH)."""
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def test_a_dead_engine_turns_ready_and_requests_into_quick_503s_and_leaves_no_process(tp2):
    """Last in this module: it breaks the module's server."""
    family = psutil.Process(tp2.pid).children(recursive=True)
    engine = [p for p in family if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    assert engine, [p.cmdline() for p in family]
    assert len(family) > len(engine)  # the tensor-parallel workers (and vLLM's helpers)
    stream = Stream(tp2, "", max_tokens=200, ignore_eos=True)
    assert stream.first.wait(60)

    engine[0].kill()
    killed = time.monotonic()
    # The stream in flight ends (with vLLM's error chunk) instead of hanging.
    assert stream.ended.wait(15) and not stream.done
    with httpx.Client(base_url=tp2.base_url, timeout=10) as c:
        until(lambda: c.get("/ready").status_code == 503, 15)
        print(f"/ready 503 {time.monotonic() - killed:.1f}s after the kill")
        for path, body in [
            ("/v1/completions", {"model": "base", "prompt": "a", "max_tokens": 5}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]}),
        ]:
            started = time.monotonic()
            r = c.post(path, json=body)
            assert time.monotonic() - started < 2
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_not_ready"
            assert "restarted" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200  # the process itself still answers

    tp2.process.send_signal(signal.SIGTERM)
    tp2.process.wait(timeout=30)
    time.sleep(1)
    alive = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.cmdline())
    assert alive == [], alive
