"""``corrigo eval refinement``: refinement strategies against baselines at the same token
budget, each steered by a verifier that is not the truth.

Every item of a suite (``evals/suites/refinement/*.jsonl``: a prompt and an exact verifier)
is sent to the server once per configuration and seed. The loop's verifier is never the exact
checker: it is ``p_true`` or ``judge`` on the served model (or, for ``self_consistency``, the
majority vote). The exact checker goes in ``truth``, which the loop applies only after it has
chosen (decoding/refinement/loop.py), to the first draft and the final answer; so flips
(correct->incorrect, incorrect->correct) are measured, not impossible by construction.

Configurations (:data:`CONFIGS`): ``single`` (the greedy draft, one candidate);
``self_consistency`` (``aggregate``: ``K`` samples, majority answer, no escalation);
``escalate@<verifier>`` (``aggregate`` as MAgICoRe routes: ``K - 1`` samples; when they all
agree the majority answer, else one ``try_again`` round from the majority sample, steered by
the verifier: :data:`ESCALATION`);
``<strategy>@<verifier>`` for each strategy. ``@p_true_samples`` is P(True) asked after the
model's own :data:`P_TRUE_SAMPLES` samples (the seeds' variant), compared by item with the
same strategy under plain ``@p_true`` (one candidate shown). Budget rule: every configuration but ``single``
gets ``K`` candidates (``max_rounds``) and ``K * max_tokens`` completion tokens for the
loop (``max_total_tokens``: candidates, critiques, constraint lists and checks); a judge's
own tokens are verifier cost, reported beside it; ``p_true`` costs one forward per candidate
and no generated token; ``p_true_samples`` also generates its samples (once per request, up to
``max_tokens`` each), verifier cost reported beside the loop's. Each request's tokens are recorded, so the budgets can be compared.

Every P(True) verifier's threshold is chosen on a validation split (:func:`calibration_items`),
each on its own scores of the same greedy drafts (:func:`calibration_jobs`,
:func:`thresholds_from`); the exact checker is only the truth it is fitted against there.

Results are appended as a run to ``refinement.json`` (commit, CPU flags, load average,
settings, every request's row, the summary); the page and plot are generated from the last
run that has a summary (evals/refinement_report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from .refinement_report import LEGACY, write_page
from .refinement_stats import auroc, best_threshold, flip, summarise_cell
from .refinement_suites import GENERATORS, SEED, check, constraints_of, generate
from .server import local_server

SUITES_DIR = Path(__file__).parent / "suites" / "refinement"
REPO = Path(__file__).resolve().parent.parent
#: The suites run by default: generated, >= 60 items each (evals/refinement_suites.py).
DEFAULT_SUITES = ("arithmetic_generated", "multi_constraint")
#: max_tokens per candidate, per suite: enough for the answer, short for a 2-core CPU.
MAX_TOKENS = {
    "arithmetic": 16,
    "arithmetic_generated": 12,
    "json_extraction": 40,
    "instructions": 40,
    "multi_constraint": 32,
    "python_functions": 80,
    "python_edge_cases": 96,
}
#: Answers ``@p_true_samples`` shows the model before asking P(True) (drawn once per request at
#: the verifier's default temperature 1.0, decoding/refinement/model_verifiers.py).
P_TRUE_SAMPLES = 4
#: The loop's verifiers: opinions of the served model, never the truth.
VERIFIERS: dict[str, dict[str, Any]] = {
    "p_true": {"type": "p_true"},
    "p_true_samples": {"type": "p_true", "samples": P_TRUE_SAMPLES},
    # A one-word verdict is all the judge must write; 8 tokens leave room for a preamble.
    "judge": {"type": "judge", "max_tokens": 8},
}
#: The verifiers whose acceptance threshold is chosen on the validation split.
CALIBRATED: tuple[str, ...] = tuple(v for v, spec in VERIFIERS.items() if spec["type"] == "p_true")
SINGLE = "single"
SELF_CONSISTENCY = "self_consistency"
#: ``escalate@<verifier>``: the aggregate strategy's fields, fixed before any run (no tuning):
#: ``K - 1`` samples leave one of the ``K`` rounds to the refiner; ``tau`` 1.0 escalates
#: unless every sample gives the same answer (the easy problems, answered by the vote).
ESCALATE = "escalate"
ESCALATION = {"strategy": "aggregate", "tau": 1.0, "escalate": "try_again"}
#: The configurations every other one is compared with, paired by item.
BASELINES = (SINGLE, SELF_CONSISTENCY)
#: A verifier's counterpart: ``<strategy>@<key>`` is also compared, paired by item, with
#: ``<strategy>@<value>`` (P(True) after samples against P(True) after the candidate alone).
COUNTERPARTS = {"p_true_samples": "p_true"}
#: Every configuration the eval knows, in table order.
CONFIGS: tuple[str, ...] = (
    SINGLE,
    SELF_CONSISTENCY,
    "best_of_n@p_true",
    "best_of_n@p_true_samples",
    "best_of_n@judge",
    "try_again@p_true",
    "try_again@p_true_samples",
    "try_again@judge",
    "self_refine@p_true",
    "decompose@p_true",
    "decompose@judge",
    "localize@p_true",
    "escalate@p_true",
)
#: Where a configuration's strategy has nothing to work on, it is not run by default:
#: decompose needs several constraints; localize needs several steps (an arithmetic answer
#: here is one line, so localize would be a plain restart). try_again@judge is left out of
#: multi_constraint for time on a 2-core CPU (its answers are 3x longer than arithmetic's).
DEFAULT_CONFIGS: dict[str, tuple[str, ...]] = {
    "arithmetic_generated": tuple(c for c in CONFIGS if not c.startswith("decompose")),
    "multi_constraint": tuple(
        c for c in CONFIGS if not c.startswith("localize") and c != "try_again@judge"
    ),
}


def config_parts(config: str) -> tuple[str, str]:
    """``(strategy, verifier)`` of a configuration name. ``single@<verifier>`` is the greedy
    draft scored by that verifier (the validation split's; ``single`` is ``single@p_true``)."""
    if config == SINGLE:
        return SINGLE, "p_true"
    if config == SELF_CONSISTENCY:
        return "aggregate", "majority"
    strategy, _, verifier = config.partition("@")
    if verifier not in VERIFIERS or not strategy:
        raise ValueError(f"unknown configuration {config!r}")
    return strategy, verifier


def counterpart(config: str) -> str | None:
    """The configuration ``config`` is compared with beside the baselines: the same strategy
    under the counterpart verifier (:data:`COUNTERPARTS`), or None."""
    strategy, verifier = config_parts(config)
    other = COUNTERPARTS.get(verifier)
    if other is None:
        return None
    return SINGLE if strategy == SINGLE and other == "p_true" else f"{strategy}@{other}"


def calibration_config(verifier: str) -> str:
    """The configuration whose greedy draft's score fits ``verifier``'s threshold."""
    if verifier not in CALIBRATED:
        raise ValueError(f"{verifier!r} has no threshold to choose")
    return SINGLE if verifier == "p_true" else f"{SINGLE}@{verifier}"


def loop_cap(config: str, suite: str, rounds: int) -> int | None:
    """The loop's completion-token budget: ``rounds * max_tokens`` (None for ``single``, which
    is bound by ``max_tokens`` alone)."""
    return None if config_parts(config)[0] == SINGLE else rounds * MAX_TOKENS[suite]


@dataclass(frozen=True)
class Job:
    suite: str
    config: str
    seed: int
    item: dict[str, Any]


def load_suite(name: str) -> list[dict[str, Any]]:
    path = SUITES_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.jsonl"))


def request_body(
    job: Job,
    model: str,
    rounds: int,
    temperature: float,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The chat request of one job: the loop steered by a non-exact verifier, the suite's
    exact verifier as ``truth`` only. ``thresholds``: each P(True) verifier's, for the job's
    suite (0.5 where absent)."""
    strategy, verifier = config_parts(job.config)
    # aggregate scores its samples too, though the vote decides: p_true, never the truth.
    name = "p_true" if verifier == "majority" else verifier
    spec = dict(VERIFIERS[name])
    if spec["type"] == "p_true":
        spec["threshold"] = (thresholds or {}).get(name, 0.5)
    refinement: dict[str, Any] = {"verifier": spec, "truth": job.item["verifier"]}
    if strategy == SINGLE:
        refinement["max_rounds"] = 1
    else:
        refinement.update(
            strategy=strategy,
            max_rounds=rounds,
            temperature=temperature,
            max_total_tokens=loop_cap(job.config, job.suite, rounds),
        )
        if strategy == "aggregate":
            refinement["samples"] = rounds
        if strategy == ESCALATE:
            refinement.update(ESCALATION, samples=rounds - 1)
    return {
        "model": model,
        "messages": [{"role": "user", "content": job.item["prompt"]}],
        "max_tokens": MAX_TOKENS[job.suite],
        "temperature": 0.0,
        "seed": job.seed,
        "correction": {"refinement": refinement},
    }


def row_of(job: Job, payload: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One request's result row. Fails when the report lacks the truth or its flip disagrees
    with the draft and final truths (fail closed: a row the stats cannot trust)."""
    report = payload["correction"]["refinement"]
    truth = report.get("truth")
    if truth is None:
        raise RuntimeError(f"{job.suite}/{job.item['id']}: the report has no truth")
    draft, chosen = bool(truth["draft"]), bool(truth["chosen"])
    if truth["flip"] != flip(draft, chosen):
        raise RuntimeError(f"{job.suite}/{job.item['id']}: flip {truth['flip']} disagrees")
    usage = payload.get("usage") or {}
    answer = payload["choices"][0]["message"]["content"] or ""
    constraints = constraints_of(job.item) if "constraints" in job.item else None
    return {
        "suite": job.suite,
        "config": job.config,
        "seed": job.seed,
        "id": job.item["id"],
        "draft": draft,
        "chosen": chosen,
        "rounds": report["rounds"],
        "stop_reason": report["stop_reason"],
        "loop_tokens": report["tokens"],
        "completion_tokens": usage.get("completion_tokens", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "accepted": report["accepted"],
        "draft_accepted": report["candidates"][0]["verdict"]["accepted"],
        "scores": [c["verdict"]["score"] for c in report["candidates"]],
        # The share of the item's constraints the final answer meets (the truth's twin).
        "constraints_met": None
        if constraints is None
        else sum(check(c, answer) for c in constraints) / len(constraints),
        "seconds": round(seconds, 3),
        "answer": answer[:300],
    }


async def run_jobs(
    base_url: str,
    api_key: str | None,
    jobs: list[Job],
    *,
    rounds: int,
    temperature: float,
    concurrency: int,
    deadline: float | None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    desc: str = "refinement eval",
) -> list[dict[str, Any]]:
    """Send the jobs (at most ``concurrency`` at once, in order); jobs not started by
    ``deadline`` (monotonic seconds) are skipped. ``thresholds``: each P(True) verifier's, by
    verifier then suite."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    thresholds = thresholds or {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=900) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        slots = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(jobs), desc=desc, unit="req")

        async def one(job: Job) -> dict[str, Any] | None:
            async with slots:
                if deadline is not None and time.monotonic() > deadline:
                    bar.update()
                    return None
                started = time.monotonic()
                mine = {
                    v: by_suite[job.suite]
                    for v, by_suite in thresholds.items()
                    if job.suite in by_suite
                }
                body = request_body(job, model, rounds, temperature, mine)
                response = await client.post("/v1/chat/completions", json=body)
                bar.update()
            if response.status_code != 200:
                raise RuntimeError(f"{job.suite}/{job.item['id']}: {response.text}")
            return row_of(job, response.json(), time.monotonic() - started)

        try:
            rows = await asyncio.gather(*(one(job) for job in jobs))
        finally:
            bar.close()
    return [r for r in rows if r is not None]


#: Items per suite in the validation split p_true's threshold is chosen on.
CALIBRATION_ITEMS = 30


def calibration_items(suite: str, n: int = CALIBRATION_ITEMS) -> list[dict[str, Any]]:
    """A validation split disjoint from the suite's items by construction: the generator at
    another seed (ids prefixed ``val-``). Only generated suites have one."""
    items = generate(suite, n, seed=SEED + 1)
    return [{**item, "id": f"val-{item['id']}"} for item in items]


def calibration_jobs(suites: Sequence[str], configs: Mapping[str, Sequence[str]]) -> list[Job]:
    """The validation split's jobs: for each generated suite, every item once (seed 0), greedy
    and scored by each P(True) verifier the suite's configurations use (``p_true`` always:
    ``single`` and ``self_consistency`` report it)."""
    jobs = []
    for suite in suites:
        if suite not in GENERATORS:
            continue
        used = {"p_true"} | {config_parts(c)[1] for c in configs[suite]}
        for verifier in (v for v in CALIBRATED if v in used):
            config = calibration_config(verifier)
            jobs += [Job(suite, config, 0, item) for item in calibration_items(suite)]
    return jobs


def thresholds_from(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each P(True) verifier's threshold per suite (by verifier, then suite):
    :func:`best_threshold` of its scores of the greedy drafts against their truth on the
    validation split."""
    out: dict[str, dict[str, float]] = {}
    for verifier, suite in sorted({(config_parts(r["config"])[1], r["suite"]) for r in rows}):
        mine = [r for r in rows if r["suite"] == suite and config_parts(r["config"])[1] == verifier]
        scores, truths = [r["scores"][0] for r in mine], [r["draft"] for r in mine]
        out.setdefault(verifier, {})[suite] = best_threshold(scores, truths)
    return out


def calibration_auroc(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each P(True) verifier's :func:`auroc` on the validation split's greedy drafts (by
    verifier, then suite): how well its score separates right drafts from wrong ones."""
    out: dict[str, dict[str, float | None]] = {}
    for verifier, suite in sorted({(config_parts(r["config"])[1], r["suite"]) for r in rows}):
        mine = [r for r in rows if r["suite"] == suite and config_parts(r["config"])[1] == verifier]
        out.setdefault(verifier, {})[suite] = auroc(
            [r["scores"][0] for r in mine], [r["draft"] for r in mine]
        )
    return out


def complete_seeds(rows: list[dict[str, Any]], jobs: list[Job]) -> list[int]:
    """The seeds every job of which has a row (a run cut by its deadline keeps only these)."""
    done = {(r["suite"], r["config"], r["seed"], r["id"]) for r in rows}
    seeds = sorted({j.seed for j in jobs})
    return [
        s
        for s in seeds
        if all((j.suite, j.config, j.seed, j.item["id"]) in done for j in jobs if j.seed == s)
    ]


def summarise(rows: list[dict[str, Any]], rounds: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Per suite and configuration: :func:`evals.refinement_stats.summarise_cell`, paired
    against the suite's baselines (:data:`BASELINES`) other than itself."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    suites = sorted({r["suite"] for r in rows})
    for suite in suites:
        in_suite = [r for r in rows if r["suite"] == suite]
        by_config = {
            c: [r for r in in_suite if r["config"] == c]
            for c in CONFIGS
            if any(r["config"] == c for r in in_suite)
        }
        out[suite] = {
            config: summarise_cell(
                config_rows,
                {
                    b: by_config[b]
                    for b in (*BASELINES, counterpart(config))
                    if b in by_config and b != config
                },
                loop_cap(config, suite, rounds),
            )
            for config, config_rows in by_config.items()
        }
    return out


def machine() -> dict[str, Any]:
    """The commit, CPU model and flags, cores and load average, for the results file."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name: str) -> str:
        return next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith(name)),
            "",
        )

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpu_model": field("model name"),
        "cpu_flags": field("flags").split(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def rows_archive(path: Path) -> Path:
    """Where earlier runs' per-request rows are kept, compressed, beside ``path``."""
    return path.with_name(f"{path.stem}-rows.json.gz")


def append_run(path: Path, run_record: dict[str, Any]) -> dict[str, Any]:
    """Append ``run_record`` to the results file's ``runs`` (an older file without ``runs`` is
    kept whole as the first run, marked :data:`LEGACY`); return the whole file.

    Only the latest run keeps its per-request rows (``items``, about 1.5 MB a run) in the
    file; earlier runs' rows move, whole, to :func:`rows_archive` (gzip, keyed by the run's
    index), and the run records where they went, so the file stays a few MB however many
    runs it holds."""
    results: dict[str, Any] = {"runs": []}
    if path.exists():
        old = json.loads(path.read_text())
        results = old if "runs" in old else {"runs": [{"kind": LEGACY, **old}]}
    archive_path = rows_archive(path)
    archive: dict[str, Any] = {}
    if archive_path.exists():
        archive = json.loads(gzip.decompress(archive_path.read_bytes()))
    moved = False
    for index, earlier in enumerate(results["runs"]):
        if isinstance(earlier.get("items"), list):
            archive[str(index)] = earlier.pop("items")
            earlier["items_archived"] = f"{archive_path.name}#/{index}"
            moved = True
    if moved:  # mtime 0: the same rows give the same bytes
        archive_path.write_bytes(gzip.compress(json.dumps(archive).encode(), mtime=0))
    results["runs"].append(run_record)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "refinement",
        help="refinement strategies vs single shot, self-consistency and best-of-n at the "
        "same token budget, verifier separate from the truth",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--base-url", help="a running corrigo server (default: start one)")
    parser.add_argument("--api-key", help="API key for --base-url")
    parser.add_argument(
        "--suites", default=",".join(DEFAULT_SUITES), help="comma-separated suite names"
    )
    parser.add_argument(
        "--configs",
        help="comma-separated configurations (default: each suite's DEFAULT_CONFIGS); "
        f"known: {', '.join(CONFIGS)}",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated request seeds")
    parser.add_argument("--rounds", type=int, default=3, help="K: candidates per config")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="temperature after the greedy draft"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--limit", type=int, help="first N items of each suite")
    parser.add_argument(
        "--deadline-minutes",
        type=float,
        help="start no request after this; only seeds complete by then are summarised",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="regenerate refinement.md and refinement.png from refinement.json",
    )
    parser.add_argument("--out", default="docs/evals", help="folder for the results and page")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    results_path = out / "refinement.json"
    if args.report_only:
        write_page(json.loads(results_path.read_text()), out)
        return 0
    suites = [s for s in args.suites.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    chosen = [c for c in (args.configs or "").split(",") if c]
    for config in chosen:
        config_parts(config)
    unknown = [s for s in suites if s not in MAX_TOKENS]
    if unknown:
        raise SystemExit(f"unknown suites: {', '.join(unknown)}")
    jobs = [
        Job(suite, config, seed, item)
        for seed in seeds  # seed-major: a run cut by its deadline keeps whole seeds
        for suite in suites
        for item in load_suite(suite)[: args.limit]
        for config in (chosen or DEFAULT_CONFIGS.get(suite, CONFIGS))
    ]
    before = machine()
    started = time.monotonic()
    deadline = started + args.deadline_minutes * 60 if args.deadline_minutes else None
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")

    configs = {s: tuple(chosen or DEFAULT_CONFIGS.get(s, CONFIGS)) for s in suites}
    validation = calibration_jobs(suites, configs)
    calibration: list[dict[str, Any]] = []
    thresholds: dict[str, dict[str, float]] = {}

    async def go(base_url: str) -> list[dict[str, Any]]:
        common = {
            "rounds": args.rounds,
            "temperature": args.temperature,
            "concurrency": args.concurrency,
        }
        calibration.extend(
            await run_jobs(
                base_url,
                args.api_key,
                validation,
                deadline=None,
                desc="P(True) thresholds",
                **common,
            )
        )
        thresholds.update(thresholds_from(calibration))
        print(f"P(True) thresholds (validation split): {thresholds}")
        return await run_jobs(
            base_url, args.api_key, jobs, deadline=deadline, thresholds=thresholds, **common
        )

    if args.base_url:
        rows = asyncio.run(go(args.base_url))
    else:
        with local_server(args.rounds) as url:
            rows = asyncio.run(go(url))
    elapsed = time.monotonic() - started
    kept = complete_seeds(rows, jobs)
    summary = summarise([r for r in rows if r["seed"] in kept], args.rounds) if kept else {}
    record = {
        "started_utc": started_utc,
        **before,
        "load_average_after": list(os.getloadavg()),
        "model": "SmolLM2-135M-Instruct (embedded)",
        "settings": {
            "suites": suites,
            "configs": {s: list(c) for s, c in configs.items()},
            "seeds": seeds,
            "rounds": args.rounds,
            "temperature": args.temperature,
            "max_tokens": {s: MAX_TOKENS[s] for s in suites},
            "verifiers": VERIFIERS,
            "p_true_thresholds": {s: thresholds.get("p_true", {}).get(s, 0.5) for s in suites},
            # Every P(True) verifier's, by verifier then suite (0.5: no validation split).
            "thresholds": {
                v: {s: thresholds.get(v, {}).get(s, 0.5) for s in suites}
                for v in CALIBRATED
                if any(config_parts(c)[1] == v for cs in configs.values() for c in cs)
                or v == "p_true"
            },
            "concurrency": args.concurrency,
            "limit": args.limit,
            "deadline_minutes": args.deadline_minutes,
        },
        "complete": kept == seeds,
        "summarised_seeds": kept,
        "seconds": round(elapsed, 1),
        "requests": len(rows),
        "summary": summary,
        "calibration": calibration,
        "calibration_auroc": calibration_auroc(calibration) if calibration else {},
        "items": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    results = append_run(results_path, record)
    write_page(results, out)
    print(f"{len(rows)} requests in {elapsed:.0f} s; seeds summarised: {kept}")
    print(f"results appended to {results_path}; page {out / 'refinement.md'}")
    return 0
