"""The refinement eval's shipped suites: valid exact verifiers, and a python_edge_cases suite
that its generator reproduces and whose tests a reference solution passes and a stub fails."""

import asyncio
import importlib.util

import pytest

from decoding.refinement import (
    VERIFIER_TYPES_CONTEXT,
    VerifyContext,
    build_verifier,
    parse_verifier,
)
from evals.refinement import MAX_TOKENS, SUITES_DIR, available_suites, load_suite
from server.refinement.verifiers import SERVER_VERIFIER_TYPES

#: The suites' verifiers are read as a server reads them (python_tests is one of its types).
CONTEXT = {VERIFIER_TYPES_CONTEXT: SERVER_VERIFIER_TYPES}


def _verifier(spec):
    return build_verifier(parse_verifier(spec, CONTEXT), SERVER_VERIFIER_TYPES)


def _generator():
    path = SUITES_DIR / "make_python_edge_cases.py"
    spec = importlib.util.spec_from_file_location("make_python_edge_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("suite", available_suites())
def test_every_item_has_an_exact_verifier(suite):
    items = load_suite(suite)
    assert items and len({i["id"] for i in items}) == len(items)
    assert suite in MAX_TOKENS
    for item in items:
        assert _verifier(item["verifier"]).exact, item["id"]


def test_python_edge_cases_is_what_its_generator_writes(tmp_path):
    shipped = (SUITES_DIR / "python_edge_cases.jsonl").read_text()
    _generator().main(tmp_path / "suite.jsonl")
    assert (tmp_path / "suite.jsonl").read_text() == shipped


def test_python_edge_cases_reference_passes_and_a_stub_fails():
    reference = _generator().REFERENCE
    ctx = VerifyContext([])

    async def check():
        for item in load_suite("python_edge_cases"):
            name = item["prompt"].split("function ", 1)[1].split("(", 1)[0]
            verifier = _verifier(item["verifier"])
            assert (await verifier.verify(reference[name], ctx)).accepted, item["id"]
            stub = f"def {name}(*args):\n    return 0"
            assert not (await verifier.verify(stub, ctx)).accepted, item["id"]

    asyncio.run(check())
    assert len(reference) == len(load_suite("python_edge_cases"))
