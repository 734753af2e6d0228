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

from collections.abc import Mapping, Sequence

import torch

from decoding.copilot import COPILOTS_CONTEXT, CopilotRectification
from decoding.correction import WIRE_KEY, CorrectionSpec, decode_wire
from decoding.pipeline import CorrectionPipeline, Row
from decoding.proxy_tuning import AUX_MODELS_CONTEXT, ProxyTuning
from decoding.unlearning import FORGET_SETS_CONTEXT, GATED_CONTEXT

from . import aux_models, copilots, forget_sets
from .request_reports import SLOTS, XARGS_KEY, ReportWriter
from .step_timing import StepTimings
from .vllm_compat import BatchUpdate, LogitsProcessor, MoveDirectionality, SamplingParams


def spec_of(params: SamplingParams) -> CorrectionSpec:
    """The correction a request carries (empty when it carries none)."""
    extra = params.extra_args or {}
    if WIRE_KEY not in extra:
        return CorrectionSpec()
    context = {
        AUX_MODELS_CONTEXT: set(aux_models.published()),
        # The gate's fields (retrieved entries, report slot) were set by corrigo's server.
        FORGET_SETS_CONTEXT: forget_sets.sizes(),
        GATED_CONTEXT: True,
        COPILOTS_CONTEXT: set(copilots.published()),
    }
    return decode_wire(extra[WIRE_KEY], context=context)


class CorrigoLogitsProcessor(LogitsProcessor):
    """Tracks which persistent-batch rows carry a correction and runs their plugins."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        from .aux_overlap import overlap_for
        from .aux_runner import AuxModelRunner

        sources = {
            name: AuxModelRunner(path, device=device)
            for name, path in aux_models.published().items()
        }
        plugins = {
            ProxyTuning.name: ProxyTuning(sources, overlap_for(device)),
            CopilotRectification.name: CopilotRectification(
                {
                    name: copilots.CopilotRunner(path, device=device)
                    for name, path in copilots.published().items()
                },
                observe=self._report_copilot,
            ),
        }
        if forget_sets.published():
            model_config = vllm_config.model_config
            unlearning = forget_sets.engine_plugin(
                model_config.tokenizer, model_config.get_vocab_size(), self._report_unlearning
            )
            plugins[unlearning.name] = unlearning
        self.reports = ReportWriter()
        self.tickets: dict[int, list[int]] = {}  # row uid -> its request's report slot
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
                self._take_ticket(index, params)
            for source, target, direction in batch_update.moved:
                self.pipeline.move(source, target, swap=direction == MoveDirectionality.SWAP)
            live = {row.uid for row in self.pipeline.rows.values()}
            self.tickets = {uid: t for uid, t in self.tickets.items() if uid in live}
        self.pipeline.prepare()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.pipeline.apply(logits)

    def _take_ticket(self, index: int, params: SamplingParams) -> None:
        """Remember the report slot of the row just added (adapters/request_reports.py)."""
        ticket = (params.extra_args or {}).get(XARGS_KEY)
        row = self.pipeline.rows.get(index)
        if row is not None and _is_ticket(ticket):
            self.tickets[row.uid] = ticket

    def _record(self, rows: Sequence[Row], figures: Mapping[str, torch.Tensor]) -> None:
        """One step's per-row figures into the rows' report slots (those that have one)."""
        at = [i for i, row in enumerate(rows) if row.uid in self.tickets]
        if at:
            self.reports.record(
                [self.tickets[rows[i].uid] for i in at],
                {name: values[at].double().cpu().numpy() for name, values in figures.items()},
            )

    def _report_copilot(self, rows: Sequence[Row], mean: torch.Tensor, top: torch.Tensor) -> None:
        steps = torch.ones(len(rows))
        self._record(
            rows, {"copilot_steps": steps, "copilot_abs_sum": mean, "copilot_abs_max": top}
        )

    def _report_unlearning(
        self, rows: Sequence[Row], blocked: torch.Tensor, penalized: torch.Tensor
    ) -> None:
        steps = torch.ones(len(rows))
        self._record(
            rows,
            {"unlearning_steps": steps, "tokens_blocked": blocked, "tokens_penalized": penalized},
        )


def _is_ticket(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
        and 0 <= value[0] < SLOTS
    )


#: What corrigo passes as ``AsyncEngineArgs(logits_processors=[...])``.
LOGITS_PROCESSOR_FQCN = f"{__name__}:{CorrigoLogitsProcessor.__qualname__}"
