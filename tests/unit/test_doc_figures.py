"""Every measured figure in README.md and docs/ comes from a committed results file.

A figure is a number with a unit of measurement (``%``, ``x``, ``tok/s``, ``req/s``, ``ms``,
`` s``). In the hand-written pages (README.md, docs/*.md) each one is either

* followed by its source, ``25.0%<!--fig docs/evals/proxy_tuning.json#/runs/-1/test-->``: an
  RFC 6901 pointer into a committed JSON file (a negative index counts from the end, so
  ``/runs/-1`` is the latest run), whose leaf, formatted like the shown figure (same decimals;
  for ``%`` the leaf or 100 x the leaf), must read the same;
* inside a generated block, ``<!--generated: python -m bench.x ARGS-->`` ... ``<!--/generated-->``,
  whose text must equal what the command prints now (it reads only committed results files);
* or not a measurement: a target or bound, preceded by ``>=``, ``<=``, ``under``, ``within`` and
  the like, or a setting, followed by ``<!--fig setting-->`` (``a 1 s<!--fig setting-->
  deadline``).

Generated pages (docs/evals/*.md, docs/bench/*.md) are written by code from the JSON file of the
same name beside them, which must exist; only their hand-written part, after
:data:`evals.results.BY_HAND`, is prose to check. Code blocks are not prose and are skipped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from evals.results import BY_HAND

REPO = Path(__file__).resolve().parents[2]
HAND_WRITTEN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GENERATED_DIRS = [REPO / "docs" / "evals", REPO / "docs" / "bench"]
GENERATED_PAGES = [page for folder in GENERATED_DIRS for page in sorted(folder.rglob("*.md"))]

FIGURE = re.compile(
    r"(?<![\w.\-/])(\d+(?:\.\d+)?)(%|x(?![\w-])| ?tok/s| ?req/s| ?ms(?!\w)| s(?![\w-]))"
)
MARKER = re.compile(r"\s*<!--fig ([^#\s]+)#(.*?)\s*-->")
SETTING = re.compile(r"\s*<!--fig setting-->")
#: A confidence level ("95% interval") is a choice, not a measurement.
CONFIDENCE = re.compile(r"\s*(?:Wilson\s+)?(?:confidence|intervals?|CI)\b")
#: A number without a unit that cites a source is checked too.
BARE_MARKED = re.compile(r"(?<![\w.\-/])(\d+(?:\.\d+)?)(?=\s*<!--fig [^#\s]+#)")
TARGET_BEFORE = re.compile(
    r"(>=|<=|≥|≤|<|>|\b(?:under|within|below|above|least|most|target|up to|over))\s*\**$",
    re.IGNORECASE,
)
GENERATED = re.compile(
    r"<!--generated: python -m ((?:bench|evals)\.[\w.]+)([^>]*)-->(.*?)<!--/generated-->", re.S
)
CODE_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


@dataclass(frozen=True)
class Problem:
    line: int
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


def resolve(document: object, pointer: str) -> object:
    """RFC 6901, plus negative list indices counted from the end."""
    node = document
    for raw in pointer.split("/")[1:] if pointer else []:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(key)]
        elif isinstance(node, dict):
            node = node[key]
        else:
            raise KeyError(key)
    return node


def matches(shown: str, unit: str, leaf: object) -> bool:
    """Whether ``leaf`` formatted like ``shown`` reads ``shown``."""
    if isinstance(leaf, bool) or not isinstance(leaf, int | float):
        return False
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    candidates = [leaf, leaf * 100] if unit == "%" else [leaf]
    return any(f"{value:.{decimals}f}" == shown for value in candidates)


def _blank(match: re.Match) -> str:
    """Blank out a span, keeping its newlines so line numbers stay right."""
    return re.sub(r"[^\n]", " ", match.group(0))


def figure_problems(text: str, repo: Path) -> list[Problem]:
    """Figures in ``text`` without a matching source (see the module docstring)."""
    problems: list[Problem] = []
    prose = INLINE_CODE.sub(_blank, CODE_FENCE.sub(_blank, text))
    prose = GENERATED.sub(_blank, prose)
    cache: dict[str, object] = {}
    found_all = [*FIGURE.finditer(prose), *BARE_MARKED.finditer(text)]
    for found in sorted(found_all, key=lambda m: m.start()):
        shown, unit = found.group(1), (found.group(2) if found.re is FIGURE else "")
        line = prose.count("\n", 0, found.start()) + 1
        if SETTING.match(text, found.end()) or (
            unit == "%" and CONFIDENCE.match(prose, found.end())
        ):
            continue
        marker = MARKER.match(text, found.end())
        if marker is None:
            before = prose[max(0, found.start() - 14) : found.start()]
            if not TARGET_BEFORE.search(before.rstrip()):
                problems.append(Problem(line, f"{shown}{unit} has no <!--fig FILE#POINTER-->"))
            continue
        file, pointer = marker.group(1), marker.group(2)
        try:
            if file not in cache:
                cache[file] = json.loads((repo / file).read_text())
            leaf = resolve(cache[file], pointer)
        except (OSError, ValueError, KeyError, IndexError) as error:
            problems.append(
                Problem(line, f"{shown}{unit}: cannot read {file}#{pointer}: {error!r}")
            )
            continue
        if not matches(shown, unit, leaf):
            problems.append(Problem(line, f"{shown}{unit} but {file}#{pointer} is {leaf!r}"))
    return problems


def generated_problems(text: str) -> list[Problem]:
    """Generated blocks whose text differs from what their command prints now."""
    problems = []
    for block in GENERATED.finditer(text):
        module, args, body = block.group(1), block.group(2).split(), block.group(3)
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        line = text.count("\n", 0, block.start()) + 1
        if done.returncode != 0:
            problems.append(Problem(line, f"python -m {module} failed: {done.stderr[-500:]}"))
        elif done.stdout.strip() != body.strip():
            problems.append(
                Problem(line, f"block differs from `python -m {module} {' '.join(args)}`")
            )
    return problems


def prose(page: Path) -> str:
    """The part of ``page`` written by hand (a generated page's after :data:`BY_HAND`)."""
    text = page.read_text()
    if page not in GENERATED_PAGES:
        return text
    return text[text.index(BY_HAND) :] if BY_HAND in text else ""


@pytest.mark.parametrize(
    "page", HAND_WRITTEN + GENERATED_PAGES, ids=lambda p: str(p.relative_to(REPO))
)
def test_every_figure_has_its_results_file(page: Path) -> None:
    problems = figure_problems(prose(page), REPO)
    assert not problems, "\n".join(map(str, problems))


@pytest.mark.parametrize("page", HAND_WRITTEN, ids=lambda p: str(p.relative_to(REPO)))
def test_generated_blocks_are_current(page: Path) -> None:
    problems = generated_problems(page.read_text())
    assert not problems, "\n".join(map(str, problems))


def test_generated_pages_sit_beside_their_results() -> None:
    """Each generated page has its results file beside it: the JSON of the same name, or the
    JSON files its header names (a page built from several)."""
    assert GENERATED_PAGES

    def sources(page: Path) -> list[Path]:
        if page.with_suffix(".json").exists():
            return [page.with_suffix(".json")]
        header = "\n".join(page.read_text().splitlines()[:6])
        return [page.parent / name for name in re.findall(r"[\w.-]+\.json", header)]

    missing = [
        str(p.relative_to(REPO))
        for p in GENERATED_PAGES
        if not sources(p) or not all(f.exists() for f in sources(p))
    ]
    assert not missing, f"generated pages without their results files: {missing}"


# The checker itself, on text with known answers.


@pytest.fixture
def results(tmp_path: Path) -> Path:
    (tmp_path / "r.json").write_text(
        json.dumps({"runs": [{"acc": 0.1}, {"acc": 0.25, "tok_s": 71.23, "ratio": 0.874}]})
    )
    return tmp_path


def test_a_marked_figure_that_reads_the_latest_run_passes(results: Path) -> None:
    text = (
        "accuracy 25.0%<!--fig r.json#/runs/-1/acc--> at 71.2 tok/s<!--fig r.json#/runs/-1/tok_s-->, "
        "0.87x<!--fig r.json#/runs/1/ratio--> of the bound, a share of 0.25<!--fig r.json#/runs/-1/acc-->"
    )
    assert figure_problems(text, results) == []


@pytest.mark.parametrize(
    "text",
    [
        "accuracy 25.0% on test",  # no source
        "accuracy 10.0%<!--fig r.json#/runs/-1/acc-->",  # the earlier run's value
        "accuracy 2.5%<!--fig r.json#/runs/-1/acc-->",  # neither 0.25 nor 25
        "at 71.3 tok/s<!--fig r.json#/runs/-1/tok_s-->",
        "at 71.2 tok/s<!--fig r.json#/runs/-1/missing-->",
        "at 71.2 tok/s<!--fig absent.json#/runs/-1/tok_s-->",
        "| 0.88x<!--fig r.json#/runs/1/ratio--> |",
        "a load of 0.4<!--fig r.json#/runs/-1/acc--> (a number without a unit, cited)",
    ],
)
def test_a_figure_without_a_matching_source_fails(results: Path, text: str) -> None:
    assert len(figure_problems(text, results)) == 1


def test_targets_code_and_words_are_not_figures(results: Path) -> None:
    text = (
        "Target: >= 0.9x the bound, overhead under 50 ms, within 1.5x of its share.\n"
        "```bash\nbench --ratio 3x --wait 10ms\n```\n"
        "run `--max 5%` and read max-2x and v1.5x; 429s; a 1 s<!--fig setting--> deadline; "
        "95% intervals, 95% Wilson interval"
    )
    assert figure_problems(text, results) == []


def test_a_generated_block_must_equal_its_command() -> None:
    block = "<!--generated: python -m bench.results_probe-->\nstale\n<!--/generated-->"
    problems = generated_problems(block)
    assert len(problems) == 1 and "failed" in problems[0].text
