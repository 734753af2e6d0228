"""Client-supplied regular expressions, run with RE2 (linear time) and off the event loop.

Every pattern a client sends (``regex.pattern``, ``answer.extract``, JSON Schema ``pattern`` and
``patternProperties``) compiles here with google-re2: matching is linear in the text, so no
pattern can make a match backtrack for seconds, and each compiled pattern's memory is capped
(:data:`MAX_MEMORY`). Patterns RE2 cannot run (backreferences, lookaround, ``\\Z``) are refused
with a message saying so, rather than run with Python's backtracking engine.

Differences from Python's ``re`` that clients see: ``\\d``, ``\\w``, ``\\s`` and ``\\b`` are
ASCII; ``$`` (without ``(?m)``) matches only at the very end, so :meth:`ClientPattern.search`
and :meth:`ClientPattern.last` also try the text without one final newline, as Python's ``$``
matches before it.

Linear is still not free: iterating the matches of a 64 KB answer costs tens of milliseconds
in the binding, and one pathological pattern can make each match scan to the end (quadratic
in the number of matches). So callers run pattern work with :func:`run_bounded`: on a small
thread pool (RE2 releases the GIL while it matches), under a deadline that
:func:`check_deadline` enforces between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import re2

#: Longest pattern accepted, in characters.
MAX_PATTERN = 2000
#: RE2's memory budget for one compiled pattern (program and DFA cache), in bytes.
MAX_MEMORY = 4 << 20
#: Seconds one verification's pattern work may take before it is abandoned.
CHECK_SECONDS = 1.0

T = TypeVar("T")

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_MEMORY
_OPTIONS.log_errors = False

#: Constructs Python's ``re`` has and RE2 does not, and what to say about them.
_UNSUPPORTED = (
    ("\\Z", "\\Z (use \\z)"),
    ("(?=", "lookahead (?=...)"),
    ("(?!", "lookahead (?!...)"),
    ("(?<=", "lookbehind (?<=...)"),
    ("(?<!", "lookbehind (?<!...)"),
    ("(?>", "atomic groups (?>...)"),
    ("(?P=", "backreferences (?P=name)"),
)


class PatternTimeout(Exception):
    """Pattern work ran past its deadline (:func:`run_bounded`)."""


class ClientPattern:
    """A compiled client pattern with Python ``re``'s search semantics (see the module doc)."""

    def __init__(self, pattern: str, regexp: Any) -> None:
        self.pattern = pattern
        self._regexp = regexp
        #: Python's ``$`` also matches before a final newline; RE2's only at the end.
        self._dollar = "$" in pattern

    def _texts(self, text: str) -> Iterator[str]:
        yield text
        if self._dollar and text.endswith("\n"):
            yield text[:-1]

    def search(self, text: str) -> bool:
        return any(self._regexp.search(t) is not None for t in self._texts(text))

    def fullmatch(self, text: str) -> bool:
        return any(self._regexp.fullmatch(t) is not None for t in self._texts(text))

    def last(self, text: str) -> str | None:
        """The last match's first group (its whole match when it has no group), or None."""
        for t in self._texts(text):
            found = None
            for match in self._regexp.finditer(t):
                check_deadline()
                found = match
            if found is not None:
                return found.group(1) if self._regexp.groups else found.group(0)
        return None


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> ClientPattern:
    """The pattern compiled with RE2. Raises ValueError saying why it cannot be used."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"the pattern is longer than {MAX_PATTERN} characters")
    try:
        regexp = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise ValueError(_explain(pattern, exc)) from None
    return ClientPattern(pattern, regexp)


def _explain(pattern: str, exc: Exception) -> str:
    detail = exc.args[0] if exc.args else exc
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    unsupported = [what for token, what in _UNSUPPORTED if token in pattern]
    if _has_backreference(pattern):
        unsupported.append("backreferences (\\1)")
    if unsupported:
        return (
            f"this server runs patterns with RE2 (linear time), which does not support "
            f"{', '.join(unsupported)}: {detail}"
        )
    return f"not a valid regular expression for RE2 (linear time): {detail}"


def _has_backreference(pattern: str) -> bool:
    escaped = False
    for ch in pattern:
        if escaped and ch.isdigit() and ch != "0":
            return True
        escaped = not escaped and ch == "\\"
    return False


# -- running pattern work off the event loop, under a deadline --------------------------------

_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="corrigo-patterns")
_LOCAL = threading.local()


def check_deadline() -> None:
    """Raise :class:`PatternTimeout` once the current :func:`run_bounded` call's time is up
    (a no-op outside one)."""
    deadline = getattr(_LOCAL, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise PatternTimeout


def _with_deadline(seconds: float, fn: Callable[..., T], *args: Any) -> T:
    _LOCAL.deadline = time.monotonic() + seconds
    try:
        return fn(*args)
    finally:
        _LOCAL.deadline = None


async def run_bounded(fn: Callable[..., T], *args: Any, seconds: float = CHECK_SECONDS) -> T:
    """``fn(*args)`` on the pattern thread pool, raising :class:`PatternTimeout` when it runs
    past ``seconds`` (checked by :func:`check_deadline` between steps; a single RE2 match is
    linear and finishes on its own). The event loop stays free meanwhile."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_EXECUTOR, _with_deadline, seconds, fn, *args)
    try:
        return await future
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            future.cancel()
        raise
