"""Per-request figures recorded by the engine and read by the server for the response's
``correction`` report (the copilot's ``|rectification|``, the unlearning filters' counts).

For each request that wants a report the server takes a ticket ``[slot, generation]`` (a free
slot and a fresh generation number) and sends it to the engine in ``vllm_xargs``
(:data:`XARGS_KEY`). Each step, the engine's output rank sends the step's figures of every row
carrying a ticket over the report channel (adapters/engine_channel.py). The server keeps them
only while the slot still carries that generation, so a late message for an aborted request
cannot land in a reused slot. Every choice of an ``n > 1`` request (and every prompt of a
batched completion) shares the ticket: the report covers them all.

Exactness. The channel and vLLM's output stream are separate sockets: a request's last tokens
can reach the server before its last step's figures. The server therefore counts the steps it
has for a ticket and, before building a report, waits (on the event loop, bounded by
:data:`SETTLE_SECONDS`) until they cover the tokens the response carries. A step is keyed by
``(uid, position)``, the row and the number of tokens it had generated before the step: vLLM
runs the logits processors on a prompt's partial prefill steps too and throws their tokens
away, and the step that then samples the row's next token has the same key and replaces it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Key of ``vllm_xargs`` carrying ``[slot, generation]``.
XARGS_KEY = "corrigo_report"
#: Requests that can hold a ticket at once; beyond, a request is served without figures.
SLOTS = 4096
#: Each step's figures, per row: sums over steps, but ``*_max`` fields, which keep the maximum.
FIELDS = (
    "copilot_steps",
    "copilot_abs_sum",
    "copilot_abs_max",
    "unlearning_steps",
    "tokens_blocked",
    "tokens_penalized",
    "abstentions",
)
_MAX = np.array([name.endswith("_max") for name in FIELDS])
#: Longest a report waits for the figures of steps whose tokens it has seen. They travel
#: beside the tokens and are sent before them (a step's figures leave before its token is
#: sampled), so this bound is only reached when they were lost.
SETTLE_SECONDS = 10.0


class _Ticket:
    """One slot's holder: its generation and its steps' figures by ``(uid, position)``."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.steps: dict[tuple[int, int], np.ndarray] = {}
        #: (tokens to cover, event) while a report waits for this ticket's steps.
        self.waiter: tuple[int, asyncio.Event] | None = None


class ReportBook:
    """The server's side: hands out tickets, files the engine's step figures under them, and
    sums them for the report. Used on the server's event loop only."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._free = list(range(slots - 1, -1, -1))
        self._held: dict[int, _Ticket] = {}
        self._generations = itertools.count(1)

    def take(self) -> list[int] | None:
        """``[slot, generation]`` for a new request, or None when every slot is in use (the
        request is then served without the figures)."""
        if not self._free:
            return None
        slot, generation = self._free.pop(), next(self._generations)
        self._held[slot] = _Ticket(generation)
        return [slot, generation]

    def give_back(self, ticket: Sequence[int]) -> None:
        held = self._held.get(ticket[0])
        if held is not None and held.generation == ticket[1]:
            del self._held[ticket[0]]  # later messages for it are ignored from now on
            self._free.append(ticket[0])

    def record(self, rows: Sequence[Sequence[float]]) -> None:
        """One step's ``[slot, generation, uid, position, *values]`` rows (values in
        :data:`FIELDS` order); rows of tickets no longer held are ignored."""
        touched = set()
        for row in rows:
            if len(row) != 4 + len(FIELDS):
                continue
            held = self._held.get(int(row[0]))
            if held is None or held.generation != row[1]:
                continue
            held.steps[int(row[2]), int(row[3])] = np.asarray(row[4:], dtype=np.float64)
            touched.add(held)
        for held in touched:
            if held.waiter is not None and len(held.steps) >= held.waiter[0]:
                held.waiter[1].set()

    def steps(self, ticket: Sequence[int]) -> int:
        """Distinct steps recorded for the ticket."""
        held = self._held.get(ticket[0])
        return len(held.steps) if held is not None and held.generation == ticket[1] else 0

    def read(self, ticket: Sequence[int]) -> dict[str, float]:
        """Every field summed over the ticket's steps (maximum for ``*_max``; zeros once the
        ticket was given back)."""
        held = self._held.get(ticket[0])
        if held is None or held.generation != ticket[1] or not held.steps:
            return dict.fromkeys(FIELDS, 0.0)
        table = np.stack(list(held.steps.values()))
        totals = np.where(_MAX, table.max(axis=0), table.sum(axis=0))
        return {name: float(v) for name, v in zip(FIELDS, totals, strict=True)}

    async def settled(
        self, ticket: Sequence[int], tokens: int, timeout: float = SETTLE_SECONDS
    ) -> dict[str, float]:
        """:meth:`read` once the ticket's steps cover ``tokens`` generated tokens (all its
        choices together), waiting for them at most ``timeout`` seconds."""
        held = self._held.get(ticket[0])
        if held is not None and held.generation == ticket[1] and len(held.steps) < tokens:
            event = asyncio.Event()
            held.waiter = (tokens, event)
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                logger.warning(
                    "report figures incomplete: %d of %d steps arrived in %.0f s",
                    len(held.steps),
                    tokens,
                    timeout,
                )
            finally:
                held.waiter = None
        return self.read(ticket)
