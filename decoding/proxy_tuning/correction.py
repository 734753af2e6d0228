"""Proxy-tuning as a per-step correction (decoding/contract.py): its auxiliary models by name,
and, where some declare their own chat format, the server-side step rendering their prompts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..aux.remote import RemoteRunner
from ..aux.runner import AuxModelRunner, runner_dtype
from ..aux.streams import overlap_for
from ..contract import AdmissionStep, Correction, EngineSetup, ServerSetup
from .plugin import AUX_MODELS_CONTEXT, LogitsSource, ProxyTuning, ProxyTuningParams
from .prompts import ProxyPrompts


def _source(path: str, device: torch.device, dtype: torch.dtype) -> LogitsSource:
    """An auxiliary model on ``device``: on the CPU in a worker process of its own, so that its
    forwards overlap the engine's (decoding/aux/remote.py says why threads do not); elsewhere
    in this process, overlapping on the device's streams (decoding/aux/streams.py)."""
    if device.type == "cpu":
        return RemoteRunner(path, dtype=dtype)
    return AuxModelRunner(path, device=device, dtype=dtype)


class ProxyTuningCorrection(Correction):
    name = ProxyTuning.name
    params = ProxyTuningParams

    def context(self, deployment: Any) -> Mapping[str, Any]:
        return {AUX_MODELS_CONTEXT: set(deployment.aux_models)}

    def plugin(self, setup: EngineSetup) -> ProxyTuning:
        sources = {
            name: _source(
                entry.path, setup.device, runner_dtype(entry.dtype, setup.dtype, setup.device)
            )
            for name, entry in setup.deployment.aux_models.items()
        }
        for source in sources.values():
            if isinstance(source, RemoteRunner):
                source.ready()  # all workers load at once; a model that cannot load fails here
        return ProxyTuning(sources, overlap_for(setup.device))

    def admission(self, setup: ServerSetup) -> AdmissionStep | None:
        """Where auxiliary models declare their own chat format (server/deployment.py loads
        them): the step that renders their prompts (prompts.py)."""
        formats = setup.deployment.prompt_formats
        return ProxyPrompts(formats) if formats else None


CORRECTION = ProxyTuningCorrection()
