"""Custom refinement verifiers, loaded from entry points the server's config names.

A package declares its verifier class under the entry-point group ``corrigo.verifiers``::

    [project.entry-points."corrigo.verifiers"]
    word_count = "my_pkg.verifiers:WordCount"

and the server enables it by name in its config (options go to the constructor)::

    [verifiers.word_count]
    options = { max_words = 50 }

Requests then use ``{"type": "word_count", ...}``. The class takes ``(params, options)``, has
an async ``verify(candidate, ctx) -> Verdict`` and may declare ``Params`` (a
:class:`decoding.refinement.VerifierParams` subclass) for the request-side keys and ``exact``
(whether its verdicts are ground truth). Only configured entry points are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import create_model

from decoding.refinement.verifier import VerifierParams, VerifierType

GROUP = "corrigo.verifiers"


class VerifierPluginError(RuntimeError):
    """A configured verifier that cannot be loaded; the message says which and why."""


def load_verifiers(configured: Mapping[str, Any]) -> list[VerifierType]:
    """The verifier type of every ``[verifiers.NAME]`` (objects with ``entry_point`` and
    ``options``)."""
    available = {ep.name: ep for ep in entry_points(group=GROUP)}
    types = []
    for name, config in configured.items():
        target = config.entry_point or name
        ep = available.get(target)
        if ep is None:
            listed = ", ".join(sorted(available)) or "none installed"
            raise VerifierPluginError(
                f"verifier '{name}': no entry point '{target}' in group '{GROUP}' ({listed})"
            )
        try:
            cls = ep.load()
        except Exception as exc:
            raise VerifierPluginError(f"verifier '{name}': cannot load {ep.value}: {exc}") from exc
        base = getattr(cls, "Params", VerifierParams)
        if not (isinstance(base, type) and issubclass(base, VerifierParams)):
            raise VerifierPluginError(f"verifier '{name}': {ep.value}.Params is not VerifierParams")
        params = create_model(f"{name}Params", __base__=base, type=(Literal[name], name))
        types.append(VerifierType(params, _factory(cls, name, dict(config.options))))
    return types


def _factory(cls: type, name: str, options: dict[str, Any]):
    def build(params: VerifierParams):
        verifier = cls(params, options)
        verifier.name = name
        if not hasattr(verifier, "exact"):
            verifier.exact = False
        return verifier

    return build
