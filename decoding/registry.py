"""The per-step corrections this build serves, in the order they run on a row's logits.

Like vLLM's list of built-in logits processors, :data:`BUILT_IN` is one explicit list: nothing
registers itself by being imported. A deployment may add corrections of its own
(``[corrections] extra = ["package.module:OBJECT"]`` in the server's config); they run after the
built-ins that shift logits and before unlearning's blocks (:data:`LAST`), in the order given,
and every engine process loads the same list from the deployment manifest. A :class:`Registry` is what the layers above derive everything from:
request validation (decoding/correction.py), the pipeline's order (adapters/logits_processor.py),
the layout of the per-row figures the engine sends (adapters/request_reports.py) and the
report (server/corrections.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Any

from . import proxy_tuning, unlearning
from .contract import REDUCES, Correction, Figure
from .copilot import correction as copilot
from .pipeline import FORCED_STOPS, PIPELINE
from .refinement.params import REFINEMENT

#: Keys a correction may not be named: refinement's, the report's list of names, and the
#: pipeline's own figures.
RESERVED = frozenset({REFINEMENT, "plugins", PIPELINE})
#: The figures the pipeline records for every corrected row (decoding/pipeline.py), first in
#: a row of figures.
PIPELINE_FIGURES: tuple[Figure, ...] = (Figure(FORCED_STOPS),)

#: Proxy-tuning shift, copilot rectification, unlearning penalties and blocks.
BUILT_IN: tuple[Correction, ...] = (
    proxy_tuning.CORRECTION,
    copilot.CORRECTION,
    unlearning.CORRECTION,
)
#: What runs last, after any extra: unlearning's blocks, so that nothing re-enables a blocked
#: token or overrides the forced abstention phrase.
LAST: Correction = unlearning.CORRECTION


class RegistryError(ValueError):
    """An extra correction that cannot be loaded or clashes with another."""


class Registry:
    """An ordered set of per-step corrections, and the per-row figure layout they imply."""

    def __init__(self, corrections: Sequence[Correction] = BUILT_IN) -> None:
        names = [c.name for c in corrections]
        clash = {n for n in names if names.count(n) > 1} | (RESERVED & set(names))
        if clash:
            raise RegistryError(
                f"correction names must be unique and not one of {sorted(RESERVED)}: {clash}"
            )
        for c in corrections:
            figures = [f.name for f in c.figures]
            if len(set(figures)) != len(figures) or any(f.reduce not in REDUCES for f in c.figures):
                raise RegistryError(
                    f"{c.name}: figure names must be unique and reduce one of {REDUCES}"
                )
        self.corrections = tuple(corrections)
        self._by_name = {c.name: c for c in self.corrections}
        #: The pipeline's and every correction's figures, in one row: ``(name, figure)``.
        self.figures: tuple[tuple[str, Figure], ...] = (
            *((PIPELINE, f) for f in PIPELINE_FIGURES),
            *((c.name, f) for c in self.corrections for f in c.figures),
        )

    @classmethod
    def with_extras(cls, references: Sequence[str]) -> Registry:
        """The built-ins with the corrections ``references`` name (``"package.module:OBJECT"``,
        each a :class:`Correction` instance) before :data:`LAST`."""
        extras = tuple(load_correction(ref) for ref in references)
        first = tuple(c for c in BUILT_IN if c is not LAST)
        return cls((*first, *extras, LAST))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def __iter__(self) -> Iterator[Correction]:
        return iter(self.corrections)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Correction:
        return self._by_name[name]

    @property
    def measured(self) -> tuple[str, ...]:
        """The corrections whose plugins record per-row figures."""
        return tuple(c.name for c in self.corrections if c.figures)

    def context(self, deployment: Any) -> dict[str, Any]:
        """Every correction's validation context on ``deployment``."""
        merged: dict[str, Any] = {}
        for correction in self.corrections:
            merged.update(correction.context(deployment))
        return merged

    def split(self, row: Sequence[float]) -> dict[str, dict[str, float]]:
        """A row of figures (:attr:`figures` order) as ``{correction: {figure: value}}``."""
        out: dict[str, dict[str, float]] = {}
        for (name, figure), value in zip(self.figures, row, strict=True):
            out.setdefault(name, {})[figure.name] = value
        return out


def load_correction(reference: str) -> Correction:
    """The :class:`Correction` ``"package.module:OBJECT"`` names (an operator's setting)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise RegistryError(f"{reference!r}: expected 'package.module:OBJECT'")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # whatever the module raises on import: the operator's to fix
        raise RegistryError(f"{reference!r} cannot be loaded: {exc}") from None
    if not isinstance(target, Correction) or not isinstance(getattr(target, "name", None), str):
        raise RegistryError(
            f"{reference!r} is a {type(target).__name__}, not a decoding.contract.Correction "
            "with a name"
        )
    return target


#: The built-in corrections, for code that serves no extras (tests, tools).
DEFAULT = Registry()
