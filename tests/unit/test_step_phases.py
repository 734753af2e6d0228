"""bench/step_phases.py's clock and its reading: the clock wraps corrigo's logits processor in a
process started with it on the path (and nothing without its folder set), and a run's steady
steps are those inside its window whose batch did not change."""

import subprocess
import sys

from bench.step_phases import CLOCK, FIELDS, steady, summarise

from ..support import REPO

PROBE = """
from adapters.logits_processor import CorrigoLogitsProcessor as P
print(P.update_state.__name__, P.apply.__name__, P._send.__name__)
"""


def _wrapped(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{CLOCK}:{REPO}", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")[-2]


def test_the_clock_wraps_the_processor_only_when_asked(tmp_path):
    assert _wrapped({"CORRIGO_STEP_CLOCK": str(tmp_path)}) == (
        "timed_update_state timed_apply timed_send"
    )
    assert _wrapped({}) == "update_state apply _send"


def _step(start, rows, corrected, period=0.04):
    values = {name: 0.0 for name in FIELDS}
    values.update(start=start, period=period, rows=rows, corrected=corrected, forward=0.03)
    return [values[name] for name in FIELDS]


def test_steady_steps_are_those_of_an_unchanged_batch_inside_a_runs_window():
    steps = [
        _step(1.0, 1, 0),
        _step(1.1, 1, 0),  # steady, run a
        _step(1.2, 2, 0),  # a row joined: left out
        _step(1.3, 2, 0),  # steady, run a
        _step(2.1, 2, 2),  # the corrected rows changed: left out
        _step(2.2, 2, 2, period=0.05),  # steady, run b
        _step(3.5, 2, 2),  # in no window
    ]
    runs = steady(steps, {"a": (0.5, 1.5), "b": (2.0, 3.0)})
    assert [s["start"] for s in runs["a"]] == [1.1, 1.3]
    assert [s["start"] for s in runs["b"]] == [2.2]
    assert summarise(runs["b"])["period_ms"] == 50.0
    assert summarise([]) == {"steps": 0}
