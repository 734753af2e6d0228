"""docs/evals/refinement.md and refinement.png, generated from refinement.json's last run that
has a summary (``corrigo eval refinement --report-only`` rewrites them). A reading written by hand
below the page's :data:`evals.results.BY_HAND` line is kept by every rewrite.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .refinement_stats import verdict
from .results import write_page as write_kept

#: A results file older than the ``runs`` list: kept whole as the first run.
LEGACY = "oracle-verifier eval (superseded: its verifier was the exact checker)"

SINGLE, SELF_CONSISTENCY = "single", "self_consistency"
#: The verifier suffix of P(True) after the model's own samples, and of plain P(True).
SAMPLES, ONE = "@p_true_samples", "@p_true"


def last_run(results: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The index and record of the last run with a summary."""
    for index in range(len(results["runs"]) - 1, -1, -1):
        run = results["runs"][index]
        if run.get("summary") and "settings" in run:
            return index, run
    raise ValueError("refinement.json holds no run with a summary")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _interval(cell: Mapping[str, float]) -> str:
    return f"{_pct(cell['mean'])} [{_pct(cell['low'])}, {_pct(cell['high'])}]"


def _diff(cell: Mapping[str, float] | None) -> str:
    if cell is None:
        return "—"
    return f"{100 * cell['mean']:+.1f} [{100 * cell['low']:+.1f}, {100 * cell['high']:+.1f}] pts"


def stop_reasons(items: Sequence[Mapping[str, Any]], suite: str, config: str) -> Counter:
    """How the loop stopped, over the run's rows of one cell."""
    return Counter(r["stop_reason"] for r in items if r["suite"] == suite and r["config"] == config)


def suite_table(
    suite: str, cells: Mapping[str, Mapping[str, Any]], items: Sequence[Mapping[str, Any]]
) -> str:
    lines = [
        "| configuration | pass rate [95% CI] | per seed | vs single (paired) | "
        "vs self-consistency (paired) | flips +/− | verifier on drafts: false accept / "
        "false reject | loop tokens / request (cap; over cap) | verifier tokens / request | "
        "rounds | stop reasons |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, cell in cells.items():
        vs = cell["vs"]
        seeds = " / ".join(_pct(v) for v in cell["seeds"].values())
        flips = cell["flips"]
        tokens = cell["tokens"]
        cap = "—" if tokens["cap"] is None else str(tokens["cap"])
        judged = cell["verifier_on_drafts"]
        wrong = f"{judged['false_accept']} / {judged['false_reject']} of {cell['n_requests']}"
        if config == SELF_CONSISTENCY:
            wrong += " (unused: the vote decides)"
        lines.append(
            f"| `{config}` | {_interval(cell['pass_rate'])} | {seeds} | "
            f"{_diff(vs.get(SINGLE))} | {_diff(vs.get(SELF_CONSISTENCY))} | "
            f"+{flips['incorrect_to_correct']}/−{flips['correct_to_incorrect']} | {wrong} | "
            f"{tokens['mean_loop_tokens']:.1f} ({cap}; {tokens['over_cap']}) | "
            f"{tokens['mean_verifier_tokens']:.1f} | {cell['mean_rounds']:.2f} | "
            + ", ".join(f"{k} {n}" for k, n in stop_reasons(items, suite, config).most_common())
            + " |"
        )
    met = {c: cell["constraints_met"] for c, cell in cells.items() if cell["constraints_met"]}
    if met:
        lines += [
            "",
            "Share of each instruction's constraints the final answer meets (by the truth's "
            "Python twin, evals/refinement_suites.py), mean over items [95% CI]: "
            + "; ".join(f"`{c}` {_interval(v)}" for c, v in met.items())
            + ".",
        ]
    return "\n".join(lines)


def findings(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """One plain sentence per suite and configuration: helps, hurts or no measurable
    difference, against single and against self-consistency."""
    out = []
    for suite, cells in summary.items():
        for config, cell in cells.items():
            if config == SINGLE:
                continue
            parts = [
                f"vs {base}: {verdict(diff)} ({_diff(diff)})" for base, diff in cell["vs"].items()
            ]
            flips = cell["flips"]
            out.append(
                f"- {suite}, `{config}`: " + "; ".join(parts) + f"; flips "
                f"+{flips['incorrect_to_correct']}/−{flips['correct_to_incorrect']}."
            )
    return out


def notes(run: Mapping[str, Any]) -> list[str]:
    """What the tables imply, each sentence computed from the run."""
    out = []
    for suite, cells in run["summary"].items():
        single = cells.get(SINGLE)
        if single and len(set(single["seeds"].values())) > 1:
            out.append(
                f"- {suite}: `single` is greedy, yet its pass rate moves across seeds ("
                + " / ".join(_pct(v) for v in single["seeds"].values())
                + "): the batch a request shares on the CPU changes the numerics, so even "
                "greedy answers move; that noise is inside the intervals."
            )
        for config, cell in cells.items():
            if config == SINGLE:
                continue
            judged = cell["verifier_on_drafts"]
            wrong = judged["false_accept"] + judged["true_reject"]
            reasons = stop_reasons(run["items"], suite, config)
            if cell["mean_rounds"] == 1.0 and set(reasons) == {"accepted"}:
                out.append(
                    f"- {suite}, `{config}` never went past the draft: its verifier accepted "
                    f"every draft, {judged['false_accept']} of the {wrong} wrong ones included, "
                    "so it equals `single` up to that noise."
                )
            elif cell["mean_rounds"] == 1.0:
                tokens = cell["tokens"]
                out.append(
                    f"- {suite}, `{config}` never went past the draft, though it was granted "
                    f"{run['settings']['rounds']} candidates: it stopped with "
                    + ", ".join(f"{k} {n}" for k, n in reasons.most_common())
                    + f" after {tokens['mean_loop_tokens']:.1f} loop tokens per request of "
                    f"the {tokens['cap']} it may spend; it measures `single`, not its strategy."
                )
            over = cell["tokens"]["over_cap"]
            if over:
                out.append(
                    f"- {suite}, `{config}`: {over} of {cell['n_requests']} requests spent more "
                    f"loop tokens than the cap ({cell['tokens']['max_loop_tokens']} > "
                    f"{cell['tokens']['cap']}): decompose checks the constraints concurrently "
                    "and each check is granted the tokens left (decoding/refinement/"
                    "strategies.py, decoding/refinement/run.py), so the checks overshoot the "
                    "budget by a few tokens; its budget is not quite equal."
                )
            if config == SELF_CONSISTENCY and cell["mean_rounds"] > 1.0:
                n = sum(reasons.values())
                out.append(
                    f"- {suite}, `self_consistency`: no majority in {reasons['disagreement']} of "
                    f"{n} requests (all 3 final answers differ); the vote's tie then goes to the "
                    "first sample, the greedy draft (decoding/refinement/votes.py)."
                )
    return out


def thresholds(settings: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Each P(True) verifier's thresholds by suite (a run before ``thresholds`` has only
    ``p_true_thresholds``)."""
    return settings.get("thresholds") or {"p_true": settings["p_true_thresholds"]}


def _auroc(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def samples_table(
    suite: str, cells: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]
) -> list[str]:
    """Each strategy run with P(True) after samples beside the same strategy with plain P(True):
    pass rates, their paired difference, the verifier's mistakes and AUROC on the drafts."""
    pairs = [
        (c[: -len(SAMPLES)] + ONE, c) for c in cells if c.endswith(SAMPLES) and c[: -len(SAMPLES)]
    ]
    pairs = [(one, many) for one, many in pairs if one in cells]
    if not pairs:
        return []
    cut = thresholds(settings)
    lines = [
        "| strategy | P(True), candidate only | P(True) after samples | after samples − "
        "candidate only (paired) | after samples vs single (paired) | false accept / false "
        "reject on drafts (only; after samples) | AUROC on drafts (only; after samples) | "
        "verifier tokens / request (only; after samples) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for one, many in pairs:
        a, b = cells[one], cells[many]
        ja, jb = a["verifier_on_drafts"], b["verifier_on_drafts"]
        lines.append(
            f"| `{one[: -len(ONE)]}` | {_interval(a['pass_rate'])} | {_interval(b['pass_rate'])}"
            f" | {_diff(b['vs'].get(one))} | {_diff(b['vs'].get(SINGLE))} | "
            f"{ja['false_accept']} / {ja['false_reject']}; {jb['false_accept']} / "
            f"{jb['false_reject']} of {b['n_requests']} | "
            f"{_auroc(a.get('verifier_auroc_on_drafts'))}; "
            f"{_auroc(b.get('verifier_auroc_on_drafts'))} | "
            f"{a['tokens']['mean_verifier_tokens']:.1f}; "
            f"{b['tokens']['mean_verifier_tokens']:.1f} |"
        )
    one_cut = cut.get("p_true", {}).get(suite)
    many_cut = cut.get("p_true_samples", {}).get(suite)
    if one_cut is not None and many_cut is not None:
        lines += [
            "",
            f"Thresholds (validation split): candidate only {one_cut:.3f}, after samples "
            f"{many_cut:.3f}.",
        ]
    return lines


def validation_auroc(run: Mapping[str, Any]) -> list[str]:
    """The validation split's AUROC of each P(True) verifier, by suite."""
    table = run.get("calibration_auroc") or {}
    if not table:
        return []
    names = {"p_true": "candidate only", "p_true_samples": "after samples"}
    return [
        "On the validation split (greedy drafts, seed 0), AUROC of P(True) against the truth: "
        + "; ".join(
            f"{suite} " + ", ".join(f"{names.get(v, v)} {_auroc(table[v][suite])}" for v in table)
            for suite in sorted({s for by_suite in table.values() for s in by_suite})
            if all(suite in table[v] for v in table)
        )
        + "."
    ]


def page(results: Mapping[str, Any]) -> str:
    index, run = last_run(results)
    settings = run["settings"]
    summary = run["summary"]
    helpful = [
        (suite, config)
        for suite, cells in summary.items()
        for config, cell in cells.items()
        if config != SINGLE and cell["vs"].get(SINGLE) and verdict(cell["vs"][SINGLE]) == "helps"
    ]
    hurting = [
        (suite, config)
        for suite, cells in summary.items()
        for config, cell in cells.items()
        if config != SINGLE and cell["vs"].get(SINGLE) and verdict(cell["vs"][SINGLE]) == "hurts"
    ]
    rounds = settings["rounds"]
    # Described only where the run used it (its threshold was fitted).
    samples = (
        settings["verifiers"]["p_true_samples"]["samples"]
        if "p_true_samples" in thresholds(settings)
        else None
    )
    lines = [
        "# Refinement: strategies vs baselines at the same budget, verifier apart from truth",
        "",
        "Generated by `corrigo eval refinement` (evals/refinement.py, evals/refinement_report.py)"
        f" from run {index} of [refinement.json](refinement.json) (`runs[{index}]`, its raw rows"
        " in `items`); plot [refinement.png](refinement.png). Everything above the by-hand "
        "marker is generated; do not edit it by hand.",
        "",
        "## Set-up",
        "",
        f"- Model: {run['model']}, vLLM CPU on {run['cpu_count']} cores "
        f"({run['cpu_model'] or 'CPU model unknown'}); load average at the start "
        f"{', '.join(f'{x:.2f}' for x in run['load_average'])}, at the end "
        f"{', '.join(f'{x:.2f}' for x in run['load_average_after'])}.",
        f"- Commit `{run['commit'][:12]}`{' (with uncommitted changes)' if run['dirty'] else ''},"
        f" started {run['started_utc']}, {run['requests']} requests in {run['seconds']:.0f} s;"
        f" seeds {settings['seeds']} (summarised: {run['summarised_seeds']}"
        f"{'' if run['complete'] else '; the run was cut by its deadline'}).",
        "- Suites (generated by `python -m evals.refinement_suites`, seeded): "
        + "; ".join(
            f"`{s}` {next(iter(summary[s].values()))['n_items']} items, max_tokens "
            f"{settings['max_tokens'][s]}"
            for s in summary
        )
        + ". `multi_constraint`: 2-4 checkable constraints per instruction (word counts, a "
        "word to include, start or end word, lowercase, no commas, a digit).",
        "- **The loop's verifier is never the truth.** `@p_true`: P(True) of the served model, "
        "accepting at a threshold chosen per suite on a validation split (the suite's generator "
        "at another seed, greedy drafts, maximising balanced accuracy against the truth): "
        + ", ".join(f"{s} {t:.3f}" for s, t in settings["p_true_thresholds"].items())
        + (
            ""
            if samples is None
            else f"; `@p_true_samples`: the same question asked after {samples} answers the "
            "model drew itself at temperature 1.0 (once per request; Kadavath et al.'s "
            "brainstorming variant), its threshold chosen the same way from its own scores of "
            "the same validation drafts: "
            + ", ".join(f"{s} {t:.3f}" for s, t in thresholds(settings)["p_true_samples"].items())
        )
        + "; `@judge`: the served model asked CORRECT/INCORRECT "
        f"(max {settings['verifiers']['judge']['max_tokens']} tokens); `self_consistency`: "
        f"`aggregate` with {rounds} samples, the majority answer wins. The suite's exact "
        "checker is the request's `truth`: applied after the loop to the first draft and the "
        "final answer, so flips are measured.",
        f"- **Budget rule.** `single`: one greedy candidate. Every other configuration: "
        f"{rounds} candidates (`max_rounds`) and a loop budget of {rounds} × max_tokens "
        "completion tokens (`max_total_tokens`, covering candidates, critiques, constraint "
        "lists and checks; the tables count the requests that spent more). A judge's own tokens are verifier cost, shown apart; `p_true` "
        "generates no token (one forward per candidate)"
        + (
            ""
            if samples is None
            else f"; `p_true_samples` generates its {samples} samples (up to max_tokens each), "
            "verifier cost outside the loop's budget, shown apart: its configurations spend "
            "more tokens than their `@p_true` counterparts"
        )
        + ". The token columns are measured per request.",
        f"- Draft greedy; later rounds at temperature {settings['temperature']}; every request "
        "carries its seed.",
        "- Interval: 95%, normal approximation over items of each item's pass share across "
        "seeds; differences are paired by item (evals/refinement_stats.py).",
        "",
        "## Where refinement does not help",
        "",
    ]
    if not helpful:
        lines.append(
            "**No configuration beats single-shot by a measurable margin on any suite** (no "
            'paired 95% interval above 0). The columns "verifier on drafts" show how often '
            "the loop's verifier misjudged the first draft against the truth."
        )
    else:
        lines.append(
            "Measurably better than single-shot (paired interval above 0): "
            + ", ".join(f"`{c}` on {s}" for s, c in helpful)
            + ". Every other configuration shows no measurable gain over single-shot."
        )
    if hurting:
        lines.append("")
        lines.append(
            "Measurably **worse** than single-shot: "
            + ", ".join(f"`{c}` on {s}" for s, c in hurting)
            + "."
        )
    lines += ["", *findings(summary), "", "What the tables imply:", "", *notes(run), ""]
    for suite, cells in summary.items():
        lines += [f"## {suite}", "", suite_table(suite, cells, run["items"]), ""]
    compared = {s: samples_table(s, cells, settings) for s, cells in summary.items()}
    if any(compared.values()):
        lines += [
            "## P(True) after the model's own samples",
            "",
            "Each strategy steered by P(True) asked after the model's own samples, beside the "
            "same strategy steered by P(True) asked about the candidate alone, on the same items"
            " and seeds (differences paired by item, 95% intervals). AUROC: how well the "
            "verifier's score of the greedy draft separates right drafts from wrong ones "
            "(0.5 is chance; a point estimate over the cell's requests).",
            "",
        ]
        for suite, table in compared.items():
            if table:
                lines += [f"### {suite}", "", *table, ""]
        lines += [*validation_auroc(run), ""]
    lines += [
        "Flips compare the final answer with the same request's first draft, judged by the "
        "truth, summed over seeds (`+` incorrect→correct, `−` correct→incorrect).",
        "",
    ]
    if results["runs"][0].get("kind") == LEGACY:
        lines += [
            "Earlier results files (an eval whose loop verifier was the exact checker, so "
            "best_of_n was an oracle pass@k and no flip could go wrong) are kept as `runs[0]`.",
            "",
        ]
    return "\n".join(lines)


def plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, run = last_run(results)
    summary = run["summary"]
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4.8), squeeze=False)
    for ax, (suite, cells) in zip(axes[0], summary.items(), strict=True):
        configs = list(cells)
        means = [cells[c]["pass_rate"]["mean"] for c in configs]
        errors = [
            [m - cells[c]["pass_rate"]["low"] for c, m in zip(configs, means, strict=True)],
            [cells[c]["pass_rate"]["high"] - m for c, m in zip(configs, means, strict=True)],
        ]
        ys = range(len(configs))
        colors = ["grey" if c in (SINGLE, SELF_CONSISTENCY) else "tab:blue" for c in configs]
        ax.barh(ys, means, xerr=errors, color=colors, capsize=3)
        ax.axvline(cells[SINGLE]["pass_rate"]["mean"], color="black", ls="--", lw=1)
        ax.set_yticks(list(ys), configs)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("pass rate by the truth (mean over seeds, 95% CI)")
        ax.set_title(f"{suite} ({next(iter(cells.values()))['n_items']} items)")
    fig.suptitle("Refinement on SmolLM2-135M: verifier in the loop is not the truth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_page(results: Mapping[str, Any], out: Path) -> None:
    write_kept(out / "refinement.md", page(results))
    plot(results, out / "refinement.png")
