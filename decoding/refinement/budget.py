"""One refinement request's budget: engine calls, sandbox seconds and wall time.

The loop's run (decoding/refinement/run.py) and the verifiers (through
:attr:`decoding.refinement.verifier.VerifyContext.budget`) draw on the same :class:`Budget`.
Its caps come from the request's ``correction.refinement`` (``max_engine_calls``,
``max_sandbox_seconds``, ``max_seconds``), which may not exceed the server's maximums
(decoding/refinement/params.py). When one runs out, :attr:`Budget.spent` names it and the loop
stops with that ``stop_reason``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

ENGINE_CALLS = "engine_call_budget"
SANDBOX_SECONDS = "sandbox_budget"
WALL_TIME = "time_budget"


class BudgetSpent(RuntimeError):
    """A verifier asked for more than the request's budget has left."""


@dataclass
class Budget:
    """Caps (None: no cap) and what has been used of them."""

    #: Generations (each sequence counts) plus verifier forwards on the engine.
    engine_calls: int | None = None
    #: Wall seconds spent in sandboxed verifiers (python_tests).
    sandbox_seconds: float | None = None
    #: Wall seconds of the whole loop.
    seconds: float | None = None
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    used_engine_calls: int = field(default=0, init=False)
    used_sandbox_seconds: float = field(default=0.0, init=False)
    #: The first budget that ran out, as a ``stop_reason``.
    spent: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def exhaust(self, reason: str) -> None:
        if self.spent is None:
            self.spent = reason

    def time_left(self) -> float | None:
        if self.seconds is None:
            return None
        left = self.seconds - (self.clock() - self.started)
        if left <= 0:
            self.exhaust(WALL_TIME)
        return max(left, 0.0)

    def grant_engine_calls(self, wanted: int) -> int:
        """How many of ``wanted`` engine calls may run now (0 once the budget is spent)."""
        if self.engine_calls is None:
            granted = wanted
        else:
            granted = max(0, min(wanted, self.engine_calls - self.used_engine_calls))
        if granted == 0 and wanted > 0:
            self.exhaust(ENGINE_CALLS)
        self.used_engine_calls += granted
        return granted

    def engine_call(self) -> None:
        """Take one engine call for a verifier, or raise :class:`BudgetSpent`."""
        if not self.grant_engine_calls(1):
            raise BudgetSpent("the request's budget of engine calls is spent")

    def sandbox_left(self) -> float | None:
        """Sandbox seconds left (None: no cap), bounded by the wall time left."""
        limits = [self.time_left()]
        if self.sandbox_seconds is not None:
            left = self.sandbox_seconds - self.used_sandbox_seconds
            if left <= 0:
                self.exhaust(SANDBOX_SECONDS)
            limits.append(max(left, 0.0))
        given = [limit for limit in limits if limit is not None]
        return min(given) if given else None

    def charge_sandbox(self, seconds: float) -> None:
        self.used_sandbox_seconds += seconds
