"""The deployment manifest: everything the engine side needs to know about this deployment,
built once by the server and carried to every engine process by vLLM's own configuration.

vLLM runs corrigo's logits processor in processes corrigo does not start: the engine core, its
tensor-parallel workers, and with Ray workers on other nodes. What reaches all of them is the
``VllmConfig`` vLLM pickles to each; corrigo puts the manifest in its ``additional_config``
field, which vLLM declares as ``dict | SupportsHash`` (vllm/config/vllm.py) and folds into
``VllmConfig.compute_hash()``. That hash keys vLLM's compile cache (and, in 0.33, its cached
start-up plan), so :meth:`DeploymentManifest.compute_hash` covers what shapes the engine (the
models, copilots and forget sets) but not the report channel, whose port and key are new at
every start: a restart with the same deployment reuses the compile cache. vLLM logs the config
through ``VllmConfig.__str__``, which leaves ``additional_config`` out; the channel's key is
left out of this class's ``repr`` too.

Forget sets travel as paths with the digest of the content the server loaded: a forget set is
secret (it says what the model must not say), so its text stays in files only corrigo's user
reads, and every engine process checks that the file it reads holds what the server's gate
uses (docs/deployment.md: with Ray on several nodes, each node needs the same file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from decoding.copilot import COPILOTS_CONTEXT
from decoding.proxy_tuning import AUX_MODELS_CONTEXT
from decoding.unlearning import FORGET_SETS_CONTEXT
from decoding.unlearning.policy import DEFAULT_ABSTENTION

from .dtypes import AuxDType


class ManifestError(RuntimeError):
    """The engine side was started without corrigo's manifest, or with a broken one."""


@dataclass(frozen=True)
class ModelEntry:
    """An auxiliary model (``[aux_models.NAME]``) or a copilot (``[copilots.NAME]``), loaded
    by the engine side."""

    #: Resolved HF-format folder (a copilot's: its checkpoint folder).
    path: str
    #: The declared dtype; "auto" is resolved on the engine side, against the engine's own
    #: dtype and device (adapters/dtypes.py).
    dtype: AuxDType = "auto"


@dataclass(frozen=True)
class ForgetSetEntry:
    """A forget set (``[forget_sets.NAME]``): where each engine process reads it, and what it
    must find there."""

    #: Resolved path of the JSONL file (private to corrigo's user).
    path: str
    #: :func:`adapters.forget_sets.digest` of the entries the server loaded.
    digest: str
    #: Number of entries (request validation bounds the retrieved indices by it).
    entries: int
    #: The phrase rows under the ``abstain`` policy are forced through (operator config,
    #: ``[forget_sets.NAME] abstention``; decoding/unlearning/abstain.py).
    abstention: str = DEFAULT_ABSTENTION


@dataclass(frozen=True)
class ReportChannel:
    """Where the engine's output rank pushes per-step figures (adapters/engine_channel.py)."""

    #: ZeroMQ endpoint the server's socket is bound to, e.g. ``tcp://127.0.0.1:40123``.
    endpoint: str
    #: Hex HMAC-SHA256 key, new at every start: only holders of the manifest can send.
    key: str = field(repr=False)


@dataclass(frozen=True)
class DeploymentManifest:
    """What the engine side serves: by name, the auxiliary models, copilots (checkpoint
    folders) and forget sets, and the channel its figures go back on (None: nobody listens,
    figures are not sent)."""

    aux_models: Mapping[str, ModelEntry] = field(default_factory=dict)
    copilots: Mapping[str, ModelEntry] = field(default_factory=dict)
    forget_sets: Mapping[str, ForgetSetEntry] = field(default_factory=dict)
    channel: ReportChannel | None = None

    def correction_context(self) -> dict[str, Any]:
        """The validation context of per-step corrections on this deployment: the names a
        request may use (and each forget set's size). The server adds its own keys (refinement,
        sandbox, policies); the engine side adds that the gate's fields were set by corrigo."""
        return {
            AUX_MODELS_CONTEXT: set(self.aux_models),
            COPILOTS_CONTEXT: set(self.copilots),
            FORGET_SETS_CONTEXT: {name: s.entries for name, s in self.forget_sets.items()},
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeploymentManifest:
        channel = data.get("channel")
        return cls(
            aux_models={n: ModelEntry(**e) for n, e in data.get("aux_models", {}).items()},
            copilots={n: ModelEntry(**e) for n, e in data.get("copilots", {}).items()},
            forget_sets={n: ForgetSetEntry(**e) for n, e in data.get("forget_sets", {}).items()},
            channel=ReportChannel(**channel) if channel is not None else None,
        )

    def compute_hash(self) -> str:
        """vLLM's ``SupportsHash``: the deployment without the per-start channel."""
        stable = {k: v for k, v in self.to_json().items() if k != "channel"}
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()

    @classmethod
    def of(cls, vllm_config) -> DeploymentManifest:
        """The manifest an engine process was started with (raises where there is none)."""
        manifest = getattr(vllm_config, "additional_config", None)
        if not isinstance(manifest, cls):
            raise ManifestError(
                "corrigo's logits processor needs the deployment manifest corrigo's server "
                "passes as vLLM's additional_config; start the engine with `corrigo serve`"
            )
        return manifest
