"""The ``python_tests`` verifier: run the candidate's code against the request's tests in the
sandbox (server/refinement/sandbox/runner.py).

``{"type": "python_tests", "tests": ["assert add(1, 2) == 3", ...]}``: the candidate's code
(its first fenced Python block, else its whole text) runs first, then each test in a fresh copy
of the namespace it defined; the score is the share of tests that pass. The sandbox contains
the host from hostile code; it does not stop code written to fool its own tests (it runs in the
same interpreter), which is the request's problem, not the server's.

Where the server's sandbox cannot be confined at the configured level (its start-up probe,
server/refinement/sandbox/runner.py), the server declares why under :data:`SANDBOX_CONTEXT`
and every ``python_tests`` spec is refused at validation: a 400 naming ``...verifier.type``.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Literal

from pydantic import Field, FiniteFloat, ValidationInfo, field_validator, model_validator

from decoding.params import NestedFieldError
from decoding.refinement.verdict import Verdict, failed
from decoding.refinement.verifier import Cost, VerifierParams, VerifierType, VerifyContext

from .sandbox.runner import SandboxLimits, SandboxUnavailable, run_python

#: Validation context key: None when the sandbox may run, else why it may not (the 400's text).
SANDBOX_CONTEXT = "python_tests_sandbox_refusal"

#: Most bytes of test code (all snippets together) a request may send.
MAX_TESTS_BYTES = 16 * 1024

_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)

_HARNESS = """\
import json as _json, sys as _sys, traceback as _tb
_out = _sys.stdout
_ns = {{"__name__": "candidate"}}
_results = []
try:
    exec(compile({code!r}, "candidate.py", "exec"), _ns)
    _loaded = None
except BaseException as _e:
    _loaded = "".join(_tb.format_exception_only(type(_e), _e)).strip()
for _i, _test in enumerate({tests!r}):
    if _loaded is not None:
        _results.append([False, "the code did not run: " + _loaded])
        continue
    try:
        exec(compile(_test, "test_%d.py" % _i, "exec"), dict(_ns))
        _results.append([True, ""])
    except BaseException as _e:
        _results.append([False, "".join(_tb.format_exception_only(type(_e), _e)).strip()])
print({marker!r} + _json.dumps(_results), file=_out, flush=True)
"""


def extract_code(text: str) -> str:
    """The first fenced Python block of ``text``, else the whole text."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


class PythonTestsParams(VerifierParams):
    type: Literal["python_tests"] = "python_tests"
    #: Test snippets (each usually one or more ``assert``), run one by one.
    tests: list[str] = Field(min_length=1, max_length=100)
    #: Wall-clock seconds for the whole run.
    timeout: FiniteFloat = Field(10.0, gt=0, le=60)
    cpu_seconds: int = Field(5, ge=1, le=60)
    memory_mb: int = Field(256, ge=64, le=4096)

    @field_validator("tests")
    @classmethod
    def _compiles(cls, tests: list[str]) -> list[str]:
        # Compiling holds the event loop (about 1 ms per KB): the total is capped first.
        size = sum(len(test.encode()) for test in tests)
        if size > MAX_TESTS_BYTES:
            raise ValueError(f"the tests are {size} bytes; this server allows {MAX_TESTS_BYTES}")
        for i, test in enumerate(tests):
            try:
                compile(test, f"test_{i}", "exec")
            except SyntaxError as exc:
                raise ValueError(f"test {i} is not valid Python: {exc.msg}") from None
        return tests

    @model_validator(mode="after")
    def _sandbox_available(self, info: ValidationInfo) -> PythonTestsParams:
        refusal = (info.context or {}).get(SANDBOX_CONTEXT)
        if refusal:
            raise NestedFieldError(refusal, ("type",))
        return self


class PythonTestsVerifier:
    name = "python_tests"
    exact = True

    def __init__(self, params: PythonTestsParams) -> None:
        self.params = params
        self.limits = SandboxLimits(
            wall_seconds=params.timeout,
            cpu_seconds=params.cpu_seconds,
            memory_mb=params.memory_mb,
        )

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        marker = f"__corrigo_results_{secrets.token_hex(8)}__"
        program = _HARNESS.format(
            code=extract_code(candidate), tests=list(self.params.tests), marker=marker
        )
        try:
            result = await run_python(program, self.limits)
        except SandboxUnavailable:
            return failed(self.name, "The sandbox is unavailable on this server; nothing ran.")
        if result.setup_error is not None:  # logged by the sandbox; host details stay there
            return failed(self.name, "The sandbox could not be set up; nothing ran.")
        details = {"exit_code": result.exit_code, "seconds": round(result.seconds, 3)}
        if result.timed_out:
            return failed(
                self.name, f"The code did not finish in {self.params.timeout:g} s.", **details
            )
        if result.output_exceeded:
            return failed(self.name, "The code printed too much output.", **details)
        lines = [line for line in result.stdout.splitlines() if line.startswith(marker)]
        if not lines:
            tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.exit_code}"]
            return failed(self.name, f"The code crashed: {tail[0]}", **details)
        outcomes = json.loads(lines[-1][len(marker) :])
        passed = sum(1 for ok, _ in outcomes if ok)
        problems = [
            f"- test {i} ({self.params.tests[i].strip().splitlines()[0][:80]}): {why}"
            for i, (ok, why) in enumerate(outcomes)
            if not ok
        ]
        score = passed / len(outcomes)
        details["passed"] = passed
        details["total"] = len(outcomes)
        if not problems:
            return Verdict(self.name, True, 1.0, details=details)
        return Verdict(
            self.name, False, score, "Failing tests:\n" + "\n".join(problems[:5]), details=details
        )


PYTHON_TESTS = VerifierType(PythonTestsParams, PythonTestsVerifier, Cost.SANDBOX)
