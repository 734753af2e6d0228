"""The one vLLM V1 logits processor corrigo registers: it hosts decoding/ plugins in the engine.

It runs in vLLM's engine-core process. A request opts in through ``SamplingParams.extra_args``
under :data:`decoding.correction.WIRE_KEY` (the server writes it; see server/corrections.py).
``validate_params`` runs in the front end at admission, so a malformed spec becomes HTTP 400
before the request reaches the batch. ``apply`` returns the logits untouched unless some row in
the batch carries a correction, so requests without one cost a dict lookup per step.
"""

from __future__ import annotations

import torch

from decoding.correction import WIRE_KEY, CorrectionSpec, decode_wire

from .vllm_compat import BatchUpdate, LogitsProcessor, MoveDirectionality, SamplingParams


def spec_of(params: SamplingParams) -> CorrectionSpec:
    """The correction a request carries (empty when it carries none)."""
    extra = params.extra_args or {}
    if WIRE_KEY not in extra:
        return CorrectionSpec()
    return decode_wire(extra[WIRE_KEY])


class CorrigoLogitsProcessor(LogitsProcessor):
    """Tracks which persistent-batch rows carry a correction and runs their plugins."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        # row index -> (spec, prompt ids, live output ids). vLLM keeps appending to the output
        # list it handed us, so the reference stays current without further updates.
        self.rows: dict[int, tuple[CorrectionSpec, list[int] | None, list[int]]] = {}

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        spec_of(params)  # raises CorrectionError (a ValueError): vLLM answers 400

    def is_argmax_invariant(self) -> bool:
        # Corrections change which token wins, so vLLM must call us even for greedy batches.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # vLLM's contract: apply removals, then additions, then moves.
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            spec = spec_of(params)
            if spec:
                self.rows[index] = (spec, prompt_ids, output_ids)
            else:
                self.rows.pop(index, None)  # a plain request may reuse a corrected row's slot
        for a, b, direction in batch_update.moved:
            row_a = self.rows.pop(a, None)
            if direction == MoveDirectionality.SWAP:
                row_b = self.rows.pop(b, None)
                if row_b is not None:
                    self.rows[a] = row_b
            else:
                self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # This build serves no per-step plugin yet (parse_correction refuses every plugin
        # name), so there is nothing to apply; the tracked rows are what plugins will act on.
        return logits


#: What corrigo passes as ``AsyncEngineArgs(logits_processors=[...])``.
LOGITS_PROCESSOR_FQCN = f"{__name__}:{CorrigoLogitsProcessor.__qualname__}"
