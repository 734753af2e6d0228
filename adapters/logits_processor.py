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

from decoding.contract import EngineSetup, Record
from decoding.correction import decode_wire
from decoding.params import SERVER_SET_CONTEXT
from decoding.pipeline import FORCED_STOPS, PIPELINE, CorrectionPipeline, Row, StepPlugin
from decoding.registry import Registry
from decoding.spec import WIRE_KEY, CorrectionSpec
from decoding.unlearning import GATED_CONTEXT

from .engine_channel import FigureSender, StepMessage
from .manifest import DeploymentManifest
from .request_reports import SLOTS, XARGS_KEY
from .tensor_parallel import RankRole
from .vllm_compat import BatchUpdate, LogitsProcessor, MoveDirectionality, SamplingParams


class _FrontEnd:
    """The server's deployment in this process, for ``validate_params`` (install_front_end)."""

    def __init__(self, manifest: DeploymentManifest) -> None:
        self.registry = manifest.registry()
        self.context = engine_context(manifest, self.registry)


def install_front_end(manifest: DeploymentManifest) -> None:
    """Let ``validate_params``, which vLLM calls on the class in the server's process, check
    requests against this deployment (the server calls it once, at start-up)."""
    global _front_end
    _front_end = _FrontEnd(manifest)


def engine_context(manifest: DeploymentManifest, registry: Registry) -> dict[str, Any]:
    """The validation context of a spec on the wire: the deployment's names, and the gate's
    and proxy-tuning's prompts' fields, which only corrigo's server sets (server/corrections.py refuses them from clients)."""
    return {**manifest.correction_context(registry), GATED_CONTEXT: True, SERVER_SET_CONTEXT: True}


#: Until the server installs its deployment: built-in corrections, nothing declared.
_front_end = _FrontEnd(DeploymentManifest())


def spec_of(
    params: SamplingParams, registry: Registry, context: Mapping[str, Any]
) -> CorrectionSpec:
    """The correction a request carries (empty when it carries none)."""
    extra = params.extra_args or {}
    if WIRE_KEY not in extra:
        return CorrectionSpec()
    return decode_wire(extra[WIRE_KEY], registry=registry, context=context)


class _ComputedElsewhere(StepPlugin):
    """A plugin's place on a rank that only follows the rows: the output rank computes it."""

    name = "elsewhere"

    def apply(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        raise RuntimeError("corrections are computed on the output rank only")


class CorrigoLogitsProcessor(LogitsProcessor):
    """Tracks which persistent-batch rows carry a correction and runs their plugins."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        manifest = DeploymentManifest.of(vllm_config)
        self.registry = manifest.registry()
        self.context = engine_context(manifest, self.registry)
        self.role = RankRole.of(vllm_config)
        self.tickets: dict[int, list[int]] = {}  # row uid -> its request's report ticket
        #: Where each correction's figures sit in a row of figures (the registry's order).
        self._columns = {
            key: i
            for i, key in enumerate((name, figure.name) for name, figure in self.registry.figures)
        }
        #: This step's figures (row uid -> one row of figures) and plugin times, sent after apply.
        self._figures: dict[int, list[float]] = {}
        self._timings: dict[str, float] = {}
        served = [c for c in self.registry if c.serves(manifest)]
        if self.role.leads:
            model_config = vllm_config.model_config
            setup = EngineSetup(
                deployment=manifest,
                device=device,
                dtype=model_config.dtype,
                tokenizer=model_config.tokenizer,
                vocab_size=model_config.get_vocab_size(),
                recorder=self._recorder,
            )
            plugins = {c.name: c.plugin(setup) for c in served}
            self.sender = FigureSender(manifest.channel) if manifest.channel else None
        else:
            plugins = {c.name: _ComputedElsewhere() for c in served}
            self.sender = None
        forced = self._recorder(PIPELINE)
        self.pipeline = CorrectionPipeline(
            plugins,
            observe=self._time,
            exhausted=lambda rows: forced(rows, {FORCED_STOPS: torch.ones(len(rows))}),
        )

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        # Raises CorrectionError (a ValueError): vLLM answers 400.
        spec_of(params, _front_end.registry, _front_end.context)

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
                    index,
                    spec_of(params, self.registry, self.context),
                    prompt_ids or [],
                    output_ids,
                    stop_token(params),
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

    def _recorder(self, correction: str) -> Record:
        """The callback through which ``correction``'s plugin records per-row figures."""

        def record(rows: Sequence[Row], figures: Mapping[str, torch.Tensor]) -> None:
            if not any(row.uid in self.tickets for row in rows):
                return  # nothing to copy off the device
            width = len(self._columns)
            columns = {
                self._columns[correction, name]: values.double().cpu().tolist()
                for name, values in figures.items()
            }
            for i, row in enumerate(rows):
                if row.uid in self.tickets:
                    values = self._figures.setdefault(row.uid, [0.0] * width)
                    for column, per_row in columns.items():
                        values[column] = per_row[i]

        return record

    def _send(self) -> None:
        """This step's message: each ticketed row (whether or not a plugin had figures for it,
        so the server can count the step) and each plugin's time."""
        none = [0.0] * len(self._columns)
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


def stop_token(params: SamplingParams) -> int | None:
    """The token forced on an exhausted row: its EOS, else (``ignore_eos``) its lowest stop
    token id, both of which end it (vLLM's stop check: vllm/v1/core/sched/utils.py
    ``check_stop``); else, under ``ignore_eos`` alone, the model's EOS, which does not end it
    (the row then emits EOS until ``max_tokens``); None if there is none."""
    if params.eos_token_id is not None:
        return params.eos_token_id
    if params.stop_token_ids:
        return min(params.stop_token_ids)
    return min(params.all_stop_token_ids, default=None)


def _is_ticket(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
        and 0 <= value[0] < SLOTS
    )


#: What corrigo passes as ``AsyncEngineArgs(logits_processors=[...])``.
LOGITS_PROCESSOR_FQCN = f"{__name__}:{CorrigoLogitsProcessor.__qualname__}"
