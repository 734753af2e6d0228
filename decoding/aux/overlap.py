"""Lanes on which auxiliary forwards run beside each other and beside the engine's forward.

A plugin submits each auxiliary model's forward to that model's lane (its name) and takes the
result later. Forwards on one lane run in submission order, so a model's KV cache is only ever
touched by one forward at a time; forwards on different lanes may overlap. How they overlap is
a device detail (decoding/aux/streams.py: a thread per lane on the CPU, a CUDA stream per lane
on a GPU); the plugin's code is the same for all. :class:`Inline` runs each forward at once,
where there is nothing to overlap.

Errors surface when the result is taken, as from a future, whatever the implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch


class Pending(Protocol):
    """A forward submitted to a lane."""

    def result(self) -> torch.Tensor:
        """Its output, ready for the caller's work that follows (waits as needed; raises the
        forward's error)."""

    def wait(self) -> None:
        """Return once the lane may run its next forward and the host may touch the model
        again (release rows); never raises (the error is :meth:`result`'s)."""


class Overlap(Protocol):
    def submit(self, lane: str, fn: Callable[..., torch.Tensor], *args: Any) -> Pending:
        """Start ``fn(*args)`` on ``lane``, after the lane's earlier forwards."""


class Done:
    """A forward that has already run on the host: its value or its error."""

    def __init__(self, value: torch.Tensor | None = None, error: Exception | None = None):
        self._value = value
        self._error = error

    def result(self) -> torch.Tensor:
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self) -> None:
        pass


class Inline:
    """Every lane runs its forward at once, on the caller's thread."""

    def submit(self, lane: str, fn: Callable[..., torch.Tensor], *args: Any) -> Pending:
        try:
            return Done(fn(*args))
        except Exception as exc:  # taken with the result, as from the other lanes
            return Done(error=exc)
