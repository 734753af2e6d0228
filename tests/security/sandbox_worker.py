"""A process that owns a python_tests sandbox for tests/security/test_sandbox.py.

``python -m tests.security.sandbox_worker '<policy json>'``, possibly under ``setpriv`` (to drop
CAP_SYS_ADMIN) or inside a restricted user namespace. It probes the sandbox once (as the server
does at start-up), prints one JSON line ``{"report", "refusal", "cap_eff", "uids"}``, then
answers each request line on stdin with one JSON line:

- ``{"runs": [{"source": ..., "limits": {...}}, ...]}``: the runs, all at once;
  answers ``{"results": [SandboxResult fields | {"unavailable": message}, ...]}``;
- ``{"verify": {"candidate": ..., "tests": [...]}}``: the python_tests verifier's verdict;
- ``{"correction": {...}}``: the validation of a request's ``correction`` against this
  sandbox, with the context the server declares (server/app.py) and mapped to a status as
  server/corrections.py's ``take_correction`` does (importing the server would import the
  engine's libraries, tens of seconds): ``{"status", "param", "message"}`` or ``{"status": 200}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.refinement import VERIFIER_TYPES_CONTEXT, VerifyContext
from server.refinement.python_tests import SANDBOX_CONTEXT, PythonTestsParams, PythonTestsVerifier
from server.refinement.sandbox import runner as sandbox
from server.refinement.verifiers import SERVER_VERIFIER_TYPES


def _cap_eff() -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return line.split()[1]
    return ""


async def _one(box: sandbox.Sandbox, run: dict) -> dict:
    try:
        result = await box.run(run["source"], sandbox.SandboxLimits(**run.get("limits", {})))
    except sandbox.SandboxUnavailable as exc:
        return {"unavailable": str(exc)}
    return asdict(result)


async def _verify(spec: dict) -> dict:
    verifier = PythonTestsVerifier(PythonTestsParams(tests=spec["tests"]))
    verdict = await verifier.verify(spec["candidate"], VerifyContext([]))
    return {"accepted": verdict.accepted, "score": verdict.score, "feedback": verdict.feedback,
            "details": verdict.details}  # fmt: skip


def _validate(box: sandbox.Sandbox, correction: dict) -> dict:
    try:
        context = {SANDBOX_CONTEXT: box.refusal, VERIFIER_TYPES_CONTEXT: SERVER_VERIFIER_TYPES}
        parse_correction(correction, context=context)
    except CorrectionError as err:
        return {"status": 400, "param": err.param, "message": err.message}
    return {"status": 200}


def main() -> None:
    policy = sandbox.SandboxPolicy(**json.loads(sys.argv[1]))
    box = sandbox.configure(policy)
    uids = sorted({box.slot_ids(slot)[0] for slot in range(policy.max_concurrent)})
    hello = {"report": box.report.to_json(), "refusal": box.refusal, "cap_eff": _cap_eff(),
             "uids": uids}  # fmt: skip
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "runs" in request:

            async def runs(items: list[dict]) -> list[dict]:
                return list(await asyncio.gather(*(_one(box, r) for r in items)))

            answer = {"results": asyncio.run(runs(request["runs"]))}
        elif "verify" in request:
            answer = asyncio.run(_verify(request["verify"]))
        else:
            answer = _validate(box, request["correction"])
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
