"""Client patterns (RE2), JSON Schemas (local refs, caps), templates: the pure pieces."""

from __future__ import annotations

import asyncio
import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.refinement import VerifyContext, build_verifier, parse_verifier
from decoding.refinement.json_schemas import check_schema
from decoding.refinement.patterns import compile_pattern
from decoding.refinement.templates import check_template, fill

SUITES = Path(__file__).resolve().parents[2] / "evals" / "suites" / "refinement"
#: Backtracks for seconds with Python's re on a 40-character answer.
EVIL = r"^(a+)+$"
EVIL_TEXT = "a" * 40 + "!"


def refused(verifier) -> CorrectionError:
    with pytest.raises(CorrectionError) as err:
        parse_correction({"refinement": {"verifier": verifier}})
    return err.value


def verdict(spec, text):
    return asyncio.run(build_verifier(parse_verifier(spec)).verify(text, VerifyContext([])))


# -- patterns ----------------------------------------------------------------------------------


def _eval_patterns() -> list[str]:
    found: set[str] = set()

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("pattern", "extract") and isinstance(item, str):
                    found.add(item)
                if key == "patternProperties" and isinstance(item, dict):
                    found.update(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in SUITES.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                walk(json.loads(line))
    return sorted(found)


SAMPLES = [
    "Today is blue!",
    "today is BLUE",
    "  'Today, the sky'",
    "one two three four five six seven eight",
    "one two three",
    "NO LOWER CASE 123",
    "no upper case\n",
    "ends with a bang!  \n",
    "The answer is: 42",
    "x\nThe answer is: 42\n",
    "",
]


@pytest.mark.parametrize(
    "pattern",
    [
        *_eval_patterns(),
        r"\d+",
        r"^\d+$",
        r"The answer is: (.*?)$",
        r"Answer: (\w+)",
        r"(?i)\bblue\b",
    ],
)
def test_re2_agrees_with_re_on_the_patterns_tests_and_evals_use(pattern):
    ours, theirs = compile_pattern(pattern), re.compile(pattern)
    for text in SAMPLES:
        assert ours.search(text) == bool(theirs.search(text)), (pattern, text)
        assert ours.fullmatch(text.strip()) == bool(theirs.fullmatch(text.strip())), text
        matches = list(theirs.finditer(text))
        expected = None
        if matches:
            last = matches[-1]
            expected = last.group(1) if last.groups() else last.group(0)
        assert ours.last(text) == expected, (pattern, text)


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (r"(a)\1", "backreferences"),
        (r"(?=a)b", "lookahead"),
        (r"(?<!a)b", "lookbehind"),
        (r"x\Z", "\\z"),
    ],
)
def test_patterns_re2_cannot_run_are_refused_saying_so(pattern, words):
    err = refused({"type": "regex", "pattern": pattern})
    assert err.param == "correction.refinement.verifier.pattern"
    assert "RE2" in err.message and words in err.message


def test_answer_extract_and_schema_patterns_are_re2_too():
    err = refused({"type": "answer", "reference": "1", "extract": r"(\d)\1"})
    assert err.param == "correction.refinement.verifier.extract" and "RE2" in err.message
    err = refused({"type": "json_schema", "schema": {"properties": {"a": {"pattern": "(?=x)"}}}})
    assert err.param == "correction.refinement.verifier.schema.properties.a.pattern"
    err = refused({"type": "json_schema", "schema": {"patternProperties": {"(?<=x)": {}}}})
    assert err.param.startswith("correction.refinement.verifier.schema.patternProperties")


def test_an_evil_pattern_is_linear_on_an_evil_answer():
    started = time.perf_counter()
    for spec in (
        {"type": "regex", "pattern": EVIL},
        {"type": "regex", "pattern": EVIL, "full_match": True},
        {"type": "answer", "reference": "x", "extract": r"((a+)+)$"},
        {"type": "json_schema", "schema": {"pattern": EVIL}},
        {"type": "json_schema", "schema": {"patternProperties": {EVIL: False}}},
        {
            "type": "json_schema",
            "schema": {"patternProperties": {EVIL: {}}, "additionalProperties": False},
        },
    ):
        text = json.dumps(EVIL_TEXT) if spec["type"] == "json_schema" else EVIL_TEXT
        if "patternProperties" in spec.get("schema", {}):
            text = json.dumps({EVIL_TEXT: 1})
        verdict(spec, text)
    # Python's backtracking engine takes hours on this answer (2**40 paths); RE2, microseconds.
    # The bound is loose so that a loaded machine cannot fail it.
    assert time.perf_counter() - started < 10


async def _worst_gap_while(coro) -> tuple[float, object]:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    result = await coro
    ticker.cancel()
    return max(gaps), result


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "answer", "reference": "1", "extract": r"a(.*b)?"},  # quadratic in matches
        {"type": "answer", "reference": "1", "extract": r"\d+"},
        {"type": "regex", "pattern": r"(x+x+)+y"},
    ],
)
def test_a_64kb_answer_does_not_block_the_event_loop(spec):
    text = "a 1 " * 16384  # 64 KB
    verifier = build_verifier(parse_verifier(spec))
    started = time.perf_counter()
    gap, result = asyncio.run(_worst_gap_while(verifier.verify(text, VerifyContext([]))))
    # The loop stays free (the check runs on the pattern pool) and the check ends within its
    # deadline (a timed-out check rejects the answer).
    # Loose bounds (a loaded machine must not fail them): on the loop, the first pattern held
    # it 6 s.
    assert gap < 0.5, gap
    assert time.perf_counter() - started < 4.5
    if "error" in result.details:
        assert result.details["error"] == "check_timeout" and not result.accepted


# -- JSON Schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "where"),
    [
        ("http://127.0.0.1:9/schema.json", "schema.$ref"),
        ("https://example.com/s.json", "schema.$ref"),
        ("file:///etc/passwd", "schema.$ref"),
        ("#/$defs/missing", "schema.$ref"),
        ("https://json-schema.org/draft/2020-12/schema", "schema.$ref"),
    ],
)
def test_refs_resolve_within_the_document_only(ref, where):
    err = refused({"type": "json_schema", "schema": {"$ref": ref}})
    assert err.param == f"correction.refinement.verifier.{where}"
    assert "locally only" in err.message


def test_nested_and_dynamic_refs_are_checked_where_they_sit():
    schema = {"properties": {"a": {"items": {"$dynamicRef": "http://x/y#z"}}}}
    err = refused({"type": "json_schema", "schema": schema})
    assert err.param == "correction.refinement.verifier.schema.properties.a.items.$dynamicRef"


def test_local_refs_still_work():
    schema = {
        "$id": "https://example.com/root.json",
        "$defs": {
            "n": {"type": "integer"},
            "item": {"$id": "item.json", "type": "string"},
            "tree": {"type": "object", "properties": {"kids": {"items": {"$ref": "#/$defs/tree"}}}},
        },
        "properties": {"n": {"$ref": "#/$defs/n"}, "s": {"$ref": "item.json"}},
    }
    spec = {"type": "json_schema", "schema": schema}
    assert verdict(spec, '{"n": 1, "s": "x"}').accepted
    assert not verdict(spec, '{"n": "1"}').accepted
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"a": {"const": 1}},
        "items": {"$ref": "#/definitions/a"},
    }
    assert verdict({"type": "json_schema", "schema": draft7}, "[1, 1]").accepted


def test_schema_size_depth_and_expansion_are_capped():
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["not"] = {}
        node = node["not"]
    assert "deeper" in refused({"type": "json_schema", "schema": deep}).message
    # Billion laughs through $refs: each level refers twice to the one below.
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(30)}
    defs["d30"] = {"type": "integer"}
    err = refused({"type": "json_schema", "schema": {"$defs": defs, "$ref": "#/$defs/d0"}})
    assert "expands" in err.message
    err = refused({"type": "json_schema", "schema": {"allOf": [{"$ref": "#"}]}})
    assert "recurse forever" in err.message
    # Recursion through the value is fine.
    tree = {"properties": {"kids": {"items": {"$ref": "#"}}}}
    assert verdict({"type": "json_schema", "schema": tree}, '{"kids": [{"kids": []}]}').accepted


def test_unique_items_is_linear_and_keeps_json_equality():
    spec = {"type": "json_schema", "schema": {"uniqueItems": True}}
    assert not verdict(spec, "[1, 1.0]").accepted
    assert verdict(spec, "[1, true]").accepted
    assert not verdict(spec, '[{"a": [1]}, {"a": [1.0]}]').accepted
    started = time.perf_counter()
    assert verdict(spec, json.dumps([[i] for i in range(20000)])).accepted
    # Pairwise comparison is 2 * 10**8 comparisons here (minutes); hashing, milliseconds.
    assert time.perf_counter() - started < 10


def test_format_is_not_asserted_and_check_schema_does_not_compile_client_regexes():
    check_schema({"format": "regex", "pattern": "a"})
    spec = {"type": "json_schema", "schema": {"format": "email"}}
    assert verdict(spec, '"not an email"').accepted


def test_unevaluated_properties_next_to_pattern_properties_is_refused():
    schema = {"patternProperties": {"^a": {}}, "unevaluatedProperties": False}
    err = refused({"type": "json_schema", "schema": schema})
    assert err.param == "correction.refinement.verifier.schema.unevaluatedProperties"


# -- templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "{question:>300000000}",
        "{question.__class__}",
        "{question!r}",
        "{question[0]}",
        "{0}",
        "{}",
        "{answer:{question}}",
        "{question",
    ],
)
def test_templates_take_only_bare_named_fields(prompt):
    tracemalloc.start()
    try:
        err = refused({"type": "p_true", "prompt": prompt})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.param == "correction.refinement.verifier.prompt"
    assert peak < 16 * 1024 * 1024, peak  # nothing was allocated (the format spec asks 300 MB)


def test_refinement_prompts_are_checked_too():
    with pytest.raises(CorrectionError) as err:
        parse_correction(
            {
                "refinement": {
                    "verifier": {"type": "regex", "pattern": "x"},
                    "prompts": {"refine": "{feedback:>99999999}"},
                }
            }
        )
    assert err.value.param == "correction.refinement.prompts.refine"


def test_client_text_inside_values_is_never_a_template():
    template = check_template("Q: {question} A: {answer} {{literal}}", "question", "answer")
    question = "{answer} {0} {question.__class__} {x:>999999999}"
    expected = f"Q: {question} A: 42 {{literal}}"
    assert fill(template, question=question, answer="42") == expected
    assert template.format(question=question, answer="42") == expected
