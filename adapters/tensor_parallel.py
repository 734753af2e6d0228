"""Corrections across tensor-parallel ranks: computed once, on the output rank, and broadcast.

What vLLM does with tensor parallelism (V1 runner, vLLM 0.32 and 0.33):

- Every rank of the last pipeline stage gets the full logits: the LM head's shards are
  all-gathered (``LogitsProcessor._gather_logits`` with ``use_all_gather()``, True on every
  platform: vllm/model_executor/layers/logits_processor.py, vllm/platforms/interface.py).
- Every such rank then runs the sampler, logits processors included, and appends the token it
  sampled itself to its own copy of the request (``req_state.output_token_ids.extend`` in
  ``GPUModelRunner._bookkeeping_sync``, vllm/v1/worker/gpu_model_runner.py; the CPU runner
  inherits it). That token is the next step's input on that rank.
- Only the executor's output rank, TP rank 0 of the last stage
  (``MultiprocExecutor._get_output_rank``, vllm/v1/executor/multiproc_executor.py; the Ray
  executor alike), returns tokens to the scheduler and so to clients.

So the ranks stay consistent only if each one samples the same token from the same logits:
a correction computed separately per rank must be bitwise equal on every rank, which thread
counts, CUDA streams and kernel choices do not guarantee for auxiliary forwards. corrigo
computes the corrections on the output rank only and broadcasts the corrected rows of the
logits to the other ranks of its tensor-parallel group before sampling; every rank then
samples from identical logits (vLLM's sampler draws its random numbers identically on every
rank, and no corrigo plugin draws any). The other ranks follow the batch's rows but load no
auxiliary model, copilot or forget set: the corrections cost memory on the output rank alone.
Per step the broadcast moves ``corrected rows x vocabulary x 4`` bytes (8 rows of a 128k
vocabulary: 4 MiB). Figures and timings come from the output rank alone, once per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .vllm_compat import get_pp_group, get_tp_group


@dataclass(frozen=True)
class RankRole:
    """This engine process's part in the corrections."""

    #: Whether this process computes the corrections (and sends figures): the output rank.
    leads: bool
    #: vLLM's tensor-parallel group coordinator when there are several ranks to keep equal.
    group: Any = None

    @classmethod
    def of(cls, vllm_config) -> RankRole:
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size == 1 and parallel.pipeline_parallel_size == 1:
            return cls(leads=True)
        tp = get_tp_group()
        return cls(
            leads=get_pp_group().is_last_rank and tp.rank_in_group == 0,
            group=tp if tp.world_size > 1 else None,
        )

    def share(self, logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The output rank's ``rows`` of ``logits`` on every rank (a collective: every rank
        of the group calls it with the same rows)."""
        if self.group is None or not rows:
            return logits
        index = torch.tensor(list(rows), device=logits.device)
        if self.leads:
            block = logits[index].contiguous()
        else:
            block = torch.empty(
                (len(rows), logits.shape[1]), dtype=logits.dtype, device=logits.device
            )
        self.group.broadcast(block, src=0)
        if not self.leads:
            logits[index] = block
        return logits
