"""The one vLLM V1 logits processor corrigo registers: it hosts the decoding/ pipeline.

It runs in vLLM's engine-core process. A request opts in through ``SamplingParams.extra_args``
under :data:`decoding.correction.WIRE_KEY` (the server writes it; see server/corrections.py).
``validate_params`` runs in the front end at admission, so a malformed spec becomes HTTP 400
before the request reaches the batch. ``update_state`` (called every step, before the model's
forward) translates vLLM's batch updates into the pipeline's add/remove/move and lets plugins
start work ahead (:meth:`CorrectionPipeline.prepare`); ``apply`` hands the batch's logits to the
pipeline, which returns at once when no row carries a correction.
"""

from __future__ import annotations

import torch

from decoding.copilot import COPILOTS_CONTEXT, CopilotRectification
from decoding.correction import WIRE_KEY, CorrectionSpec, decode_wire
from decoding.pipeline import CorrectionPipeline
from decoding.proxy_tuning import AUX_MODELS_CONTEXT, ProxyTuning

from . import aux_models, copilots
from .step_timing import StepTimings
from .vllm_compat import BatchUpdate, LogitsProcessor, MoveDirectionality, SamplingParams


def spec_of(params: SamplingParams) -> CorrectionSpec:
    """The correction a request carries (empty when it carries none)."""
    extra = params.extra_args or {}
    if WIRE_KEY not in extra:
        return CorrectionSpec()
    context = {
        AUX_MODELS_CONTEXT: set(aux_models.published()),
        COPILOTS_CONTEXT: set(copilots.published()),
    }
    return decode_wire(extra[WIRE_KEY], context=context)


class CorrigoLogitsProcessor(LogitsProcessor):
    """Tracks which persistent-batch rows carry a correction and runs their plugins."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        from .aux_runner import AuxModelRunner, forward_pool

        sources = {
            name: AuxModelRunner(path, device=device)
            for name, path in aux_models.published().items()
        }
        plugins = {
            ProxyTuning.name: ProxyTuning(sources, forward_pool(len(sources), device)),
            CopilotRectification.name: CopilotRectification(
                {
                    name: copilots.CopilotRunner(path, device=device)
                    for name, path in copilots.published().items()
                }
            ),
        }
        self.timings = StepTimings(list(plugins))
        self.pipeline = CorrectionPipeline(plugins, observe=self.timings.observe)

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        spec_of(params)  # raises CorrectionError (a ValueError): vLLM answers 400

    def is_argmax_invariant(self) -> bool:
        # Corrections change which token wins, so vLLM must call us even for greedy batches.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            # vLLM's contract: apply removals, then additions, then moves.
            for index in batch_update.removed:
                self.pipeline.remove(index)
            for index, params, prompt_ids, output_ids in batch_update.added:
                self.pipeline.add(index, spec_of(params), prompt_ids or [], output_ids)
            for source, target, direction in batch_update.moved:
                self.pipeline.move(source, target, swap=direction == MoveDirectionality.SWAP)
        self.pipeline.prepare()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.pipeline.apply(logits)


#: What corrigo passes as ``AsyncEngineArgs(logits_processors=[...])``.
LOGITS_PROCESSOR_FQCN = f"{__name__}:{CorrigoLogitsProcessor.__qualname__}"
