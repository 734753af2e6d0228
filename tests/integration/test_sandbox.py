"""Item 7: hostile programs in the python_tests sandbox are contained (real subprocesses).

No engine: these run the sandbox directly, the way the python_tests verifier does, and check
each containment from the outside (files, processes, the host's network and environment).
test_refinement.py sends the same programs through the whole server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid

import psutil
import pytest

from adapters.sandbox import SandboxLimits, run_python, sandbox_user

LIMITS = SandboxLimits(wall_seconds=4, cpu_seconds=2, memory_mb=256)


def run(source: str, limits: SandboxLimits = LIMITS):
    return asyncio.run(run_python(source, limits))


def sandbox_processes() -> list[psutil.Process]:
    """Processes left of sandboxes: the sandbox user's (root) or launchers we started."""
    uid = sandbox_user()[0] if os.geteuid() == 0 else None
    out = []
    for p in psutil.process_iter(["uids", "cmdline", "ppid"]):
        ours = (
            p.info["uids"] is not None and p.info["uids"].real == uid
            if uid is not None
            else "sandbox_launcher" in " ".join(p.info["cmdline"] or [])
        )
        if ours:
            out.append(p)
    return out


def test_a_normal_program_runs_in_a_clean_throwaway_directory():
    result = run("import os, sys\nprint(os.getcwd(), sorted(os.environ), sys.flags.isolated)")
    assert result.exit_code == 0, result.stderr
    cwd = result.stdout.split()[0]
    assert cwd.endswith("/work")
    assert "['HOME', 'LANG', 'PATH', 'TMPDIR']" in result.stdout
    assert not os.path.exists(cwd), "the working directory outlived the sandbox"


def test_fork_bomb_is_contained():
    started = time.monotonic()
    result = run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    )
    assert result.exit_code != 0
    assert time.monotonic() - started < LIMITS.wall_seconds + 3
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sandbox_processes(), "processes of the fork bomb outlived the sandbox"


def test_infinite_loop_hits_the_cpu_limit():
    started = time.monotonic()
    result = run("while True:\n    pass")
    assert result.exit_code != 0
    assert time.monotonic() - started < LIMITS.cpu_seconds + 3


def test_sleeping_forever_hits_the_wall_clock_limit():
    result = run("import time\ntime.sleep(60)", SandboxLimits(wall_seconds=1))
    assert result.timed_out and result.seconds < 3


def test_memory_hog_gets_memory_error():
    result = run("x = bytearray(2 * 1024 ** 3)\nprint('allocated')")
    assert result.exit_code != 0 and "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


def test_no_network_not_even_loopback():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted = []
    listener.settimeout(3)

    def accept():
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    result = run(
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    )
    thread.join()
    listener.close()
    assert "connected" not in result.stdout and not accepted
    assert result.exit_code != 0


def test_writing_outside_the_working_directory_leaves_no_trace(tmp_path):
    name = f"corrigo-escape-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}", str(tmp_path / name)]
    program = "\n".join(
        f"try:\n    open({t!r}, 'w').write('x')\nexcept OSError as e:\n    print('refused', e)"
        for t in targets
    )
    result = run(program + "\nopen('inside.txt', 'w').write('ok')")
    assert result.exit_code == 0, result.stderr
    for target in targets:
        assert not os.path.exists(target), target


def test_output_is_capped():
    result = run("while True:\n    print('x' * 1000)", SandboxLimits(output_bytes=10_000))
    assert result.output_exceeded and len(result.stdout) == 10_000


def test_the_servers_environment_is_out_of_reach(monkeypatch):
    monkeypatch.setenv("CORRIGO_SECRET_FOR_TEST", "s3cret")
    program = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            print(open(f'/proc/{pid}/environ').read())\n"
        "        except OSError:\n"
        "            pass\n"
    )
    result = run(program)
    assert result.exit_code == 0, result.stderr
    assert "s3cret" not in result.stdout and "CORRIGO_SECRET" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_runs_as_an_unprivileged_user():
    result = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    uid, gid = sandbox_user()
    assert result.stdout.split()[:2] == [str(uid), str(gid)]


def verify_code(candidate: str, tests: list[str]):
    from adapters.python_tests import PythonTestsParams, PythonTestsVerifier
    from decoding.refinement import VerifyContext

    verifier = PythonTestsVerifier(PythonTestsParams(tests=tests))
    return asyncio.run(verifier.verify(candidate, VerifyContext([])))


def test_python_tests_scores_the_share_of_passing_tests():
    tests = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 1"]
    fenced = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    verdict = verify_code(fenced, tests)
    assert not verdict.accepted and verdict.score == pytest.approx(2 / 3)
    assert "test 2 (assert add(0, 0) == 1): AssertionError" in verdict.feedback
    assert verify_code("def add(a, b):\n    return a + b", tests[:2]).accepted


def test_python_tests_reports_code_that_does_not_run():
    verdict = verify_code("def add(a, b) return", ["assert add(1, 1) == 2"])
    assert verdict.score == 0 and "did not run" in verdict.feedback
    assert "SyntaxError" in verdict.feedback
    crashed = verify_code("import os\nos._exit(3)", ["assert True"])
    assert not crashed.accepted and crashed.details["exit_code"] == 3


def test_printing_a_fake_result_line_does_not_pass():
    fake = "print('__corrigo_results_0000000000000000__[[true, \"\"]]')\nraise SystemExit(0)"
    assert not verify_code(fake, ["assert False"]).accepted
