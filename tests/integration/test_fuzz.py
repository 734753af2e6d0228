"""Schemathesis fuzzes the live server against its own OpenAPI document: no 5xx, and every
response matches the documented status codes, content types, headers and schemas.

Generated requests are valid (positive) and invalid (negative) per the document; invalid ones
must be refused cleanly, never break the server (the document lists the fields corrigo
documents, so the server may accept more than it describes). ``max_tokens`` (``max_output_tokens``
on /v1/responses) is clamped to a few tokens (an absent one means "up to the context length") so the run stays fast. Bounded: a fixed
number of derandomized examples per operation and mode.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ..conftest import API_KEY

pytestmark = pytest.mark.engine

MAX_TOKENS = 3
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_no_server_errors_and_responses_match_the_document(live_server):
    document = httpx.get(f"{live_server.base_url}/openapi.json").json()
    assert "requestBody" in document["paths"]["/v1/chat/completions"]["post"]
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=live_server.base_url)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    failures: list[str] = []
    calls = 0

    def check(case) -> None:
        nonlocal calls
        if isinstance(case.body, dict):
            # /v1/responses names its cap max_output_tokens.
            name = "max_output_tokens" if case.path == "/v1/responses" else "max_tokens"
            tokens = case.body.get(name)
            if tokens is None or (isinstance(tokens, int) and tokens > MAX_TOKENS):
                case.body[name] = MAX_TOKENS
        calls += 1
        try:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)
        except AssertionError as exc:  # schemathesis' failure group, with the reproduction
            failures.append(f"{case.method} {case.path} {case.body!r:.300}\n{exc}")

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/tokenize",
        "/detokenize",
        "/version",
    }
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            run = settings(
                max_examples=EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )(given(case=strategy)(check))
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
    print(f"{calls} requests over {len(operations)} operations")
    assert failures == [], "\n\n".join(failures[:5])
