"""Proxy-tuning as a per-step correction (decoding/contract.py): its auxiliary models by name,
and, where some declare their own chat format, the server-side step rendering their prompts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..aux.runner import AuxModelRunner, runner_dtype
from ..aux.streams import overlap_for
from ..contract import AdmissionStep, Correction, EngineSetup, ServerSetup
from .plugin import AUX_MODELS_CONTEXT, ProxyTuning, ProxyTuningParams
from .prompts import ProxyPrompts


class ProxyTuningCorrection(Correction):
    name = ProxyTuning.name
    params = ProxyTuningParams

    def context(self, deployment: Any) -> Mapping[str, Any]:
        return {AUX_MODELS_CONTEXT: set(deployment.aux_models)}

    def plugin(self, setup: EngineSetup) -> ProxyTuning:
        sources = {
            name: AuxModelRunner(
                entry.path,
                device=setup.device,
                dtype=runner_dtype(entry.dtype, setup.dtype, setup.device),
            )
            for name, entry in setup.deployment.aux_models.items()
        }
        return ProxyTuning(sources, overlap_for(setup.device))

    def admission(self, setup: ServerSetup) -> AdmissionStep | None:
        """Where auxiliary models declare their own chat format (server/deployment.py loads
        them): the step that renders their prompts (prompts.py)."""
        formats = setup.deployment.prompt_formats
        return ProxyPrompts(formats) if formats else None


CORRECTION = ProxyTuningCorrection()
