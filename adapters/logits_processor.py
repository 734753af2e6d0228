"""The one vLLM V1 logits processor corrigo registers: it hosts the decoding/ pipeline.

It runs in vLLM's engine processes (the engine core, or each tensor-parallel worker, on this
node or, with Ray, another), which learn what this deployment serves from the deployment
manifest in their vLLM config (adapters/manifest.py). A request opts in through
``SamplingParams.extra_args`` under :data:`decoding.correction.WIRE_KEY` (the server writes it;
see server/corrections.py). ``validate_params`` runs in the server's process at admission, so a
malformed spec becomes HTTP 400 before the request reaches the batch; it checks against the
manifest the server installed there (:func:`install_front_end`). ``update_state`` (called every
step, before the model's forward) translates vLLM's batch updates into the pipeline's
add/remove/move and lets plugins start work ahead (:meth:`CorrectionPipeline.prepare`);
``apply`` hands the batch's logits to the pipeline, which returns at once when no row carries a
correction.

With several ranks only the output rank computes corrections; the others receive its corrected
rows (adapters/tensor_parallel.py). The output rank sends each step's figures and plugin times
to the server (adapters/engine_channel.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from decoding.copilot import CopilotRectification
from decoding.correction import WIRE_KEY, CorrectionSpec, decode_wire
from decoding.pipeline import CorrectionPipeline, Row, StepPlugin
from decoding.proxy_tuning import ProxyTuning
from decoding.unlearning import GATED_CONTEXT, Unlearning

from . import copilots, forget_sets
from .aux_overlap import overlap_for
from .aux_runner import AuxModelRunner, runner_dtype
from .engine_channel import FigureSender, StepMessage
from .manifest import DeploymentManifest
from .request_reports import FIELDS, SLOTS, XARGS_KEY
from .tensor_parallel import RankRole
from .vllm_compat import BatchUpdate, LogitsProcessor, MoveDirectionality, SamplingParams

_FIELD = {name: i for i, name in enumerate(FIELDS)}

#: The manifest of the server in this process, for ``validate_params`` (install_front_end).
_front_end = DeploymentManifest()


def install_front_end(manifest: DeploymentManifest) -> None:
    """Let ``validate_params``, which vLLM calls on the class in the server's process, check
    requests against this deployment (the server calls it once, at start-up)."""
    global _front_end
    _front_end = manifest


def engine_context(manifest: DeploymentManifest) -> dict[str, Any]:
    """The validation context of a spec on the wire: the deployment's names, and the gate's
    fields, which only corrigo's server sets (server/corrections.py refuses them from clients)."""
    return {**manifest.correction_context(), GATED_CONTEXT: True}


def spec_of(params: SamplingParams, context: Mapping[str, Any]) -> CorrectionSpec:
    """The correction a request carries (empty when it carries none)."""
    extra = params.extra_args or {}
    if WIRE_KEY not in extra:
        return CorrectionSpec()
    return decode_wire(extra[WIRE_KEY], context=context)


def plugin_names(manifest: DeploymentManifest) -> list[str]:
    """The per-step plugins an engine of this deployment hosts."""
    names = [ProxyTuning.name, CopilotRectification.name]
    return [*names, Unlearning.name] if manifest.forget_sets else names


class _ComputedElsewhere(StepPlugin):
    """A plugin's place on a rank that only follows the rows: the output rank computes it."""

    name = "elsewhere"

    def apply(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        raise RuntimeError("corrections are computed on the output rank only")


class CorrigoLogitsProcessor(LogitsProcessor):
    """Tracks which persistent-batch rows carry a correction and runs their plugins."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        manifest = DeploymentManifest.of(vllm_config)
        self.context = engine_context(manifest)
        self.role = RankRole.of(vllm_config)
        self.tickets: dict[int, list[int]] = {}  # row uid -> its request's report ticket
        #: This step's figures (row uid -> FIELDS values) and plugin times, sent after apply.
        self._figures: dict[int, list[float]] = {}
        self._timings: dict[str, float] = {}
        if self.role.leads:
            plugins = self._plugins(manifest, vllm_config, device)
            self.sender = FigureSender(manifest.channel) if manifest.channel else None
        else:
            plugins = {name: _ComputedElsewhere() for name in plugin_names(manifest)}
            self.sender = None
        self.pipeline = CorrectionPipeline(plugins, observe=self._time)

    def _plugins(self, manifest: DeploymentManifest, vllm_config, device) -> dict[str, StepPlugin]:

        engine_dtype = vllm_config.model_config.dtype
        sources = {
            name: AuxModelRunner(
                entry.path, device=device, dtype=runner_dtype(entry.dtype, engine_dtype, device)
            )
            for name, entry in manifest.aux_models.items()
        }
        plugins: dict[str, StepPlugin] = {
            ProxyTuning.name: ProxyTuning(sources, overlap_for(device)),
            CopilotRectification.name: CopilotRectification(
                {
                    name: copilots.CopilotRunner(
                        entry.path,
                        device=device,
                        dtype=runner_dtype(entry.dtype, engine_dtype, device),
                    )
                    for name, entry in manifest.copilots.items()
                },
                observe=self._report_copilot,
            ),
        }
        if manifest.forget_sets:
            model_config = vllm_config.model_config
            plugins[Unlearning.name] = forget_sets.engine_plugin(
                manifest.forget_sets,
                model_config.tokenizer,
                model_config.get_vocab_size(),
                self._report_unlearning,
            )
        assert list(plugins) == plugin_names(manifest)
        return plugins

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        # Raises CorrectionError (a ValueError): vLLM answers 400.
        spec_of(params, engine_context(_front_end))

    def is_argmax_invariant(self) -> bool:
        # Corrections change which token wins, so vLLM must call us even for greedy batches.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            # vLLM's contract: apply removals, then additions, then moves.
            for index in batch_update.removed:
                self.pipeline.remove(index)
            for index, params, prompt_ids, output_ids in batch_update.added:
                self.pipeline.add(
                    index, spec_of(params, self.context), prompt_ids or [], output_ids
                )
                self._take_ticket(index, params)
            for source, target, direction in batch_update.moved:
                self.pipeline.move(source, target, swap=direction == MoveDirectionality.SWAP)
            live = {row.uid for row in self.pipeline.rows.values()}
            self.tickets = {uid: t for uid, t in self.tickets.items() if uid in live}
        self.pipeline.prepare()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.pipeline.rows:
            return logits
        if self.role.leads:
            logits = self.pipeline.apply(logits)
            self._send()
        return self.role.share(logits, sorted(self.pipeline.rows))

    def _take_ticket(self, index: int, params: SamplingParams) -> None:
        """Remember the report ticket of the row just added (adapters/request_reports.py)."""
        ticket = (params.extra_args or {}).get(XARGS_KEY)
        row = self.pipeline.rows.get(index)
        if row is not None and _is_ticket(ticket):
            self.tickets[row.uid] = ticket

    def _time(self, plugin: str, seconds: float) -> None:
        self._timings[plugin] = seconds

    def _record(self, rows: Sequence[Row], figures: Mapping[str, torch.Tensor]) -> None:
        """One plugin's per-row figures of this step, for the rows that have a ticket."""
        if not any(row.uid in self.tickets for row in rows):
            return  # nothing to copy off the device
        columns = {_FIELD[name]: values.double().cpu().tolist() for name, values in figures.items()}
        for i, row in enumerate(rows):
            if row.uid in self.tickets:
                values = self._figures.setdefault(row.uid, [0.0] * len(FIELDS))
                for column, per_row in columns.items():
                    values[column] = per_row[i]

    def _send(self) -> None:
        """This step's message: each ticketed row (whether or not a plugin had figures for it,
        so the server can count the step) and each plugin's time."""
        none = [0.0] * len(FIELDS)
        rows = [
            [
                *self.tickets[row.uid],
                row.uid,
                len(row.stream.output),
                *self._figures.get(row.uid, none),
            ]
            for row in self.pipeline.rows.values()
            if row.uid in self.tickets
        ]
        if self.sender is not None and (rows or self._timings):
            self.sender.send(StepMessage(dict(self._timings), rows))
        self._figures.clear()
        self._timings.clear()

    def _report_copilot(self, rows: Sequence[Row], mean: torch.Tensor, top: torch.Tensor) -> None:
        steps = torch.ones(len(rows))
        self._record(
            rows, {"copilot_steps": steps, "copilot_abs_sum": mean, "copilot_abs_max": top}
        )

    def _report_unlearning(
        self,
        rows: Sequence[Row],
        blocked: torch.Tensor,
        penalized: torch.Tensor,
        abstained: torch.Tensor,
    ) -> None:
        steps = torch.ones(len(rows))
        self._record(
            rows,
            {
                "unlearning_steps": steps,
                "tokens_blocked": blocked,
                "tokens_penalized": penalized,
                "abstentions": abstained,
            },
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
