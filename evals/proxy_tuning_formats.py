"""The proxy-tuning eval's per-model prompts row (evals/proxy_tuning.py, stage ``formats``).

The paper's main setting: an untuned base that reads the bare prompt, steered by a chat-tuned
expert pair that reads the prompt in the chat format it was trained on, each model in its own
format (``[aux_models.NAME] chat_template``, decoding/proxy_tuning/prompts.py). Before
per-model prompts, corrigo rendered one prompt for all models. Both run in one server, on the
same items:

- the served base renders every chat request with :data:`BARE_TEMPLATE` (``[frontend]
  chat_template``): each message's text and a blank line, the ``"base"`` format of
  decoding/proxy_tuning/prompts.py, i.e. the text an untuned base would be given;
- ``one rendering`` (corrigo before): the pair ``expert``/``anti`` with no ``chat_template``,
  stepping on the served model's rendering, the bare prompt;
- ``per model``: the same two folders as ``expert_chat``/``anti_chat`` with
  ``chat_template = "chat"``, their tokenizer's chat template, the format the anti-expert was
  distilled and the expert tuned on.

Alpha is chosen for each condition on the validation split (:func:`choose_alpha`: best
accuracy, the smaller alpha on a tie) and the test split is reported at it. The difference
(per model minus one rendering) is paired by item; a fact's four wordings are not independent,
so its interval is over facts (:func:`paired_by_fact`): with ``r_i`` the rightness (0 or 1) of
question ``i`` under each condition, ``d_f = mean_{i in f} (r_i(per model) - r_i(one
rendering))`` and ``mean_f d_f +- 1.96 * sd(d) / sqrt(F)`` (the mean over facts equals the
accuracy difference, every fact having four questions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

from .refinement_stats import mean_interval

#: The served model's chat template in this row: each message's text followed by a blank line,
#: as ``chat_template = "base"`` renders an aux model's prompt (no special token is added:
#: SmolLM2's tokenizer adds none).
BARE_TEMPLATE = "{% for message in messages %}{{ message['content'] }}\n\n{% endfor %}"

Condition = Literal["one rendering", "per model"]
CONDITIONS: tuple[Condition, ...] = get_args(Condition)

#: The pair each condition names in its requests, and its ``chat_template`` (None: unset).
PAIRS: dict[Condition, tuple[str, str, str | None]] = {
    "one rendering": ("expert", "anti", None),
    "per model": ("expert_chat", "anti_chat", "chat"),
}

#: The base alone under the bare template.
BARE_BASE = "base (bare prompt)"


def server_config(template: Path, expert: Path, anti: Path) -> str:
    """The TOML added to the eval server's config: the bare template for the served model and
    both pairs, with the real keys."""
    lines = ["[frontend]", f"chat_template = {json.dumps(str(template))}"]
    for condition in CONDITIONS:
        expert_name, anti_name, setting = PAIRS[condition]
        for name, folder in ((expert_name, expert), (anti_name, anti)):
            lines += ["", f"[aux_models.{name}]", f"path = {json.dumps(str(folder))}"]
            if setting is not None:
                lines.append(f"chat_template = {json.dumps(setting)}")
    return "\n" + "\n".join(lines) + "\n"


def correction(condition: Condition, alpha: float) -> dict:
    """The request's ``correction`` for ``condition`` at ``alpha``."""
    expert, anti, _ = PAIRS[condition]
    return {"proxy_tuning": {"expert": expert, "anti_expert": anti, "alpha": alpha}}


def system_name(condition: Condition, alpha: float) -> str:
    """The stage record's key of ``condition`` at ``alpha``."""
    return f"{condition}, alpha={alpha:g}"


def expected_prompts(condition: Condition) -> dict[str, str] | None:
    """The ``prompts`` of the response's proxy-tuning report for ``condition`` on the shipped
    path: the per-model pair is listed with its format; the other pair has none (it steps on
    the served model's rendering)."""
    expert, anti, setting = PAIRS[condition]
    return None if setting is None else {anti: setting, expert: setting}


def check_report(condition: Condition, report: object) -> None:
    """Fail closed unless the response's ``correction`` report ran proxy-tuning with
    :func:`expected_prompts` (the row must measure the shipped path, not a server that ignored
    ``chat_template``)."""
    report = report if isinstance(report, dict) else {}
    section = report.get("proxy_tuning")
    prompts = section.get("prompts") if isinstance(section, dict) else None
    expected = expected_prompts(condition)
    if "proxy_tuning" not in (report.get("plugins") or ()) or prompts != expected:
        raise RuntimeError(
            f"{condition}: the server reported {report!r}; expected proxy_tuning with prompts "
            f"{expected!r}"
        )


def choose_alpha(validation: Mapping[float, float]) -> float:
    """The alpha of best validation accuracy, the smaller alpha on a tie."""
    if not validation:
        raise ValueError("no alpha to choose from")
    return max(validation, key=lambda a: (validation[a], -a))


def paired_by_fact(
    new: Sequence[bool], old: Sequence[bool], facts: Sequence[str]
) -> dict[str, float | int]:
    """Accuracy of ``new`` minus ``old`` on the same questions (``facts[i]`` owns question
    ``i``), its 95% interval over facts (module docstring), and the questions only one side
    gets right."""
    if not (len(new) == len(old) == len(facts)) or not facts:
        raise ValueError("a paired difference needs the same non-empty items on both sides")
    by_fact: dict[str, list[float]] = {}
    for n, o, f in zip(new, old, facts, strict=True):
        by_fact.setdefault(f, []).append(float(n) - float(o))
    per_fact = [sum(d) / len(d) for d in by_fact.values()]
    interval = mean_interval(per_fact, clip=(-1.0, 1.0))
    return {
        "difference": sum(float(n) - float(o) for n, o in zip(new, old, strict=True)) / len(new),
        "low": interval.low,
        "high": interval.high,
        "facts": len(per_fact),
        "items": len(new),
        "new_only": sum(bool(n) and not o for n, o in zip(new, old, strict=True)),
        "old_only": sum(bool(o) and not n for n, o in zip(new, old, strict=True)),
    }


def summarise(
    record: Mapping[str, Mapping], right: Mapping[str, Sequence[bool]], facts: Sequence[str]
) -> dict:
    """The docs JSON of the row: per condition the alpha chosen on validation, its scores and
    its sweep; the base alone; the paired test difference. ``record`` is the stage record
    (system name -> scores, as evals/proxy_tuning.py's ``_score`` gives them) and ``right``
    each system's rightness on the test questions, in ``facts``' order."""
    out: dict = {"served_template": BARE_TEMPLATE, "base": _rates(record[BARE_BASE])}
    chosen: dict[str, str] = {}
    for condition in CONDITIONS:
        sweep = {
            float(name.rsplit("=", 1)[1]): scores
            for name, scores in record.items()
            if name.startswith(f"{condition}, alpha=")
        }
        alpha = choose_alpha({a: s["validation"]["accuracy"]["rate"] for a, s in sweep.items()})
        chosen[condition] = system_name(condition, alpha)
        out[condition] = {
            "pair": dict(zip(("expert", "anti_expert"), PAIRS[condition][:2], strict=True)),
            "chat_template": PAIRS[condition][2],
            "chosen_alpha": alpha,
            **_rates(record[chosen[condition]]),
            "sweep": {
                a: {
                    "validation": s["validation"]["accuracy"],
                    "test": s["test"]["accuracy"],
                    "test_form": s["test"]["form"],
                    "general": s["general"],
                }
                for a, s in sorted(sweep.items())
            },
        }
    out["per model - one rendering (test)"] = paired_by_fact(
        right[chosen["per model"]], right[chosen["one rendering"]], facts
    )
    return out


def _rates(scores: Mapping) -> dict:
    return {
        "test": scores["test"],
        "validation": scores["validation"],
        "general": scores["general"],
        "examples": scores["answers"]["test"][:4],
    }
