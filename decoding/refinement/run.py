"""One request's refinement loop state: its candidates, budgets and stop reason.

A :class:`RefinementRun` holds one request's loop: its budgets (rounds, tokens, and the
:class:`~decoding.refinement.budget.Budget` of engine calls, sandbox seconds and wall time it
shares with the verifiers), the candidates with their verdicts, and why it stopped. The
strategies (strategies.py) drive it through :meth:`RefinementRun.generate` and
:meth:`RefinementRun.add`; the loop (loop.py) starts it and selects the answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .answers import Answer, ToolCall
from .budget import WALL_TIME, Budget
from .generation import GenerateFn, Generation, GenerationRefused, Message
from .params import RefinementParams, RefinementPrompts
from .specs import build_verifier
from .verdict import Verdict
from .verifier import Services, Verifier, VerifierTypes, VerifyContext
from .verifier_types import BUILTIN_VERIFIER_TYPES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One answer the loop produced. ``step`` is how: draft, retry, refine or sample."""

    index: int
    step: str
    text: str
    tokens: int
    finish_reason: str | None
    verdict: Verdict
    #: The generation's engine record (see :attr:`Generation.payload`).
    payload: Any = field(default=None, compare=False, repr=False)
    #: The tool calls its message made.
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def answer(self) -> Answer:
        """What verifiers read: the text with the tool calls."""
        return Answer(self.text, self.tool_calls)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.index,
            "step": self.step,
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "verdict": self.verdict.to_json(),
        }
        if self.tool_calls:
            out["tool_calls"] = [call.to_json() for call in self.tool_calls]
        return out


class RefinementRun:
    """One request's loop state and budgets. Strategies call :meth:`generate` (which returns
    None once a budget is spent) and :meth:`add` (which verifies a new candidate)."""

    def __init__(
        self,
        params: RefinementParams,
        messages: Sequence[Message],
        generate: GenerateFn,
        verifier: Verifier,
        ctx: VerifyContext,
        *,
        on_candidate: Callable[[Candidate], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        verifier_types: VerifierTypes = BUILTIN_VERIFIER_TYPES,
        sequence_tokens: int | None = None,
    ) -> None:
        self.params = params
        #: The most completion tokens one sequence can take (the request's ``max_tokens``,
        #: where ``generate`` caps every sequence; None: unknown): a call reserves no more of
        #: ``max_total_tokens`` per sequence than this, so a draft drawn beside samples does
        #: not hold the whole budget while they are refused.
        self.sequence_tokens = sequence_tokens
        self.messages = list(messages)
        self._generate = generate
        self.verifier = verifier
        self.budget = Budget(
            engine_calls=params.max_engine_calls,
            sandbox_seconds=params.max_sandbox_seconds,
            seconds=params.max_seconds,
            clock=clock,
        )
        self.ctx = dataclasses.replace(
            ctx, services=_metered(ctx.services, self.budget), budget=self.budget
        )
        self.on_candidate = on_candidate
        self.clock = clock
        self.started = self.budget.started
        self.tokens = 0
        #: Tokens granted to generations still in flight: concurrent calls (decompose's
        #: checks) each get a share of what is left, never all of it.
        self.reserved_tokens = 0
        self.candidates: list[Candidate] = []
        self.stop_reason: str | None = None
        #: The first refusal from the engine, if any.
        self.refusal: GenerationRefused | None = None
        #: The registry the request's verifier specs were validated against.
        self.verifier_types = verifier_types
        #: A candidate the next strategy starts from instead of drawing a draft (aggregate
        #: escalating hands over its majority sample); taken by :meth:`take_start`.
        self.start: Candidate | None = None
        #: The answer a strategy chose itself (aggregate's majority); None: the loop selects.
        self.chosen: Candidate | None = None
        #: What each strategy reports beyond the candidates, by strategy name.
        self.details: dict[str, dict[str, Any]] = {}

    @property
    def prompts(self) -> RefinementPrompts:
        return self.params.prompts

    @property
    def rounds_left(self) -> int:
        return self.params.max_rounds - len(self.candidates)

    def build(self, spec: Mapping[str, Any]) -> Verifier:
        """The verifier a validated spec of this request describes."""
        return build_verifier(spec, self.verifier_types)

    def take_start(self) -> Candidate | None:
        """The candidate handed over to start from (once), or None."""
        start, self.start = self.start, None
        return start

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def _spent(self) -> str | None:
        budget = self.params.max_total_tokens
        if budget is not None and self.tokens >= budget:
            return "token_budget"
        self.budget.time_left()
        return self.budget.spent

    async def generate(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[Generation] | None:
        """Generations within the budgets, or None (and the run stops) when one is spent."""
        if self.stop_reason is not None:
            return None
        spent = self._spent()
        if spent is not None:
            self.stop(spent)
            return None
        if self.params.max_total_tokens is not None:
            # Each of the n sequences may take at most its share of what no other call holds,
            # so the total stays within max_total_tokens however the calls interleave.
            left = self.params.max_total_tokens - self.tokens - self.reserved_tokens
            share = left // n
            if share <= 0:
                self.stop("token_budget")
                return None
            caps = [c for c in (max_tokens, self.sequence_tokens) if c is not None]
            max_tokens = min([share, *caps])
        n = self.budget.grant_engine_calls(n)
        if n == 0:
            self.stop(self.budget.spent or "engine_call_budget")
            return None
        reserved = n * max_tokens if self.params.max_total_tokens is not None else 0
        self.reserved_tokens += reserved
        call = self._generate(messages, n=n, max_tokens=max_tokens, temperature=temperature)
        try:
            generations = await asyncio.wait_for(call, self.budget.time_left())
        except TimeoutError:
            self.stop(WALL_TIME)
            return None
        except GenerationRefused as exc:
            self.refusal = self.refusal or exc
            self.stop("generation_refused")
            return None
        finally:
            self.reserved_tokens -= reserved
        self.tokens += sum(g.tokens for g in generations)
        return generations

    async def verify(self, text: str, verifier: Verifier | None = None) -> Verdict:
        verifier = verifier or self.verifier
        try:
            return await verifier.verify(text, self.ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken verifier rejects; it does not fail the request
            # What failed (a URL, a refused connection, an environment) is for the operator:
            # the client learns only that it failed, the same way whatever the cause, so
            # outbound verifiers cannot be used to probe the network.
            request = self.ctx.request_id
            logger.warning(
                "request %s: verifier %s failed: %s: %s",
                request,
                verifier.name,
                type(exc).__name__,
                exc,
            )
            where = f" for request {request}" if request else ""
            message = f"the {verifier.name} verifier failed; see the server log{where}"
            return Verdict(verifier.name, False, 0.0, details={"error": message})

    async def verify_in_budget(self, text: str, verifier: Verifier | None = None) -> Verdict:
        """:meth:`verify`, cut off (rejected, and the run stopped) when the wall time runs out;
        a verifier that spent the engine-call or sandbox budget stops the run too."""
        verifier = verifier or self.verifier
        try:
            verdict = await asyncio.wait_for(self.verify(text, verifier), self.budget.time_left())
        except TimeoutError:
            self.budget.exhaust(WALL_TIME)
            verdict = Verdict(verifier.name, False, 0.0, details={"error": "time budget spent"})
        if self.budget.spent is not None:
            self.stop(self.budget.spent)
        return verdict

    async def add(self, generation: Generation, step: str) -> Candidate:
        """Verify ``generation`` and record it as the next candidate."""
        verdict = await self.verify_in_budget(Answer(generation.text, generation.tool_calls))
        candidate = Candidate(
            len(self.candidates),
            step,
            generation.text,
            generation.tokens,
            generation.finish_reason,
            verdict,
            generation.payload,
            generation.tool_calls,
        )
        self.candidates.append(candidate)
        if self.on_candidate is not None:
            await self.on_candidate(candidate)
        return candidate


def _metered(services: Services, budget: Budget) -> Services:
    """The services with every engine call a verifier makes drawn from ``budget``."""
    generate, next_token = services.generate, services.next_token

    async def metered_generate(
        messages: Sequence[Message],
        *,
        n: int = 1,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        assert generate is not None
        for _ in range(n):  # each sequence counts, as in RefinementRun.generate
            budget.engine_call()
        return await generate(messages, n=n, max_tokens=max_tokens, temperature=temperature)

    async def metered_next_token(prompt: str, top: int) -> dict[str, float]:
        assert next_token is not None
        budget.engine_call()
        return await next_token(prompt, top)

    return dataclasses.replace(
        services,
        generate=metered_generate if generate is not None else None,
        next_token=metered_next_token if next_token is not None else None,
    )


__all__ = ["Candidate", "RefinementRun"]
