"""Guarded unlearning as a per-step correction (decoding/contract.py): the deployment's forget
sets, the filters' counts per request, and the gate as its admission step in the server (its
report is the gate's: it knows the decision)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..contract import Correction, EngineSetup, Figure, ServerSetup
from ..pipeline import Row
from .admission import UnlearningGate, policies
from .classifier import TrainedGate, gate_path, load_gate
from .embeddings import minilm
from .forget_set import ForgetSet
from .gate import Embedder
from .loading import check_private, engine_plugin
from .params import FORGET_SETS_CONTEXT, UnlearningParams
from .plugin import Unlearning


class UnlearningCorrection(Correction):
    name = Unlearning.name
    params = UnlearningParams
    #: Per step: 1, whether the row's most likely token was blocked, or else penalised away,
    #: and whether the row began its abstention phrase (``on_match = "abstain"``).
    figures = (
        Figure("steps"),
        Figure("tokens_blocked"),
        Figure("tokens_penalized"),
        Figure("abstentions"),
    )

    def context(self, deployment: Any) -> Mapping[str, Any]:
        return {FORGET_SETS_CONTEXT: {n: s.entries for n, s in deployment.forget_sets.items()}}

    def serves(self, deployment: Any) -> bool:
        return bool(deployment.forget_sets)

    def plugin(self, setup: EngineSetup) -> Unlearning:
        record = setup.recorder(self.name)

        def observe(
            rows: Sequence[Row],
            blocked: torch.Tensor,
            penalized: torch.Tensor,
            abstained: torch.Tensor,
        ) -> None:
            record(
                rows,
                {
                    "steps": torch.ones(len(rows)),
                    "tokens_blocked": blocked,
                    "tokens_penalized": penalized,
                    "abstentions": abstained,
                },
            )

        return engine_plugin(
            setup.deployment.forget_sets, setup.tokenizer, setup.vocab_size, observe
        )

    def admission(self, setup: ServerSetup) -> UnlearningGate | None:
        """The gate over the forget sets the server loaded (the engine side filters with the
        same content: decoding/unlearning/loading.py)."""
        if not setup.deployment.forget_sets:
            return None
        # The gate's MiniLM is the only torch work in the server's process. One thread keeps
        # it off the core(s) the engine computes on; its inputs are a few short texts each.
        torch.set_num_threads(1)
        embedder = minilm()
        return UnlearningGate(
            setup.deployment.forget_sets,
            embedder,
            setup.metrics,
            policies(setup.config.forget_sets),
            setup.config.limits,
            trained_gates(setup.deployment.forget_sets, setup.deployment.manifest, embedder),
        )


def trained_gates(
    forget_sets: Mapping[str, ForgetSet], manifest: Any, embedder: Embedder
) -> dict[str, TrainedGate]:
    """The trained gate of each set that has one beside its file
    (decoding/unlearning/classifier.py ``gate_path``), checked against the server's embedder and
    the set's entries (ForgetSetError otherwise: the server does not start)."""
    out = {}
    for name, forget_set in forget_sets.items():
        entry = manifest.forget_sets[name]
        path = gate_path(entry.path)
        if path.exists():
            check_private(name, str(path))
            out[name] = load_gate(path, forget_set, embedder, entry.digest)
    return out


CORRECTION = UnlearningCorrection()
