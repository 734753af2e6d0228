"""The deployment manifest (adapters/manifest.py), built once from the config at start-up.

Each declaration is checked here, before the engine starts, so a deployment that cannot serve
fails with a message naming the key: auxiliary models must share the served model's tokenizer,
copilots must be bound to it, forget sets must be private and valid. The forget sets loaded here
are the gate's; the manifest names them by path and digest for the engine side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters import aux_models, copilots, forget_sets
from adapters.engine import ServedModel
from adapters.manifest import AuxModelEntry, DeploymentManifest, ReportChannel
from decoding.unlearning import ForgetSet

from .config import Config


@dataclass(frozen=True)
class Deployment:
    """The manifest, and the forget sets the server's gate uses (the same content)."""

    manifest: DeploymentManifest
    forget_sets: dict[str, ForgetSet]


def build_deployment(config: Config, model: ServedModel, channel: ReportChannel) -> Deployment:
    aux = {}
    for name, spec in config.aux_models.items():
        path = aux_models.resolve_path(spec.path)
        aux_models.check_compatible(name, path, model.path)
        aux[name] = AuxModelEntry(path=path)
    bound = {}
    for name, spec in config.copilots.items():
        path = str(Path(spec.path).expanduser().resolve())
        copilots.check_binding(name, path, model.path)
        bound[name] = path
    paths = {name: forget_sets.resolve_path(s.path) for name, s in config.forget_sets.items()}
    loaded = forget_sets.load_all(paths)
    manifest = DeploymentManifest(
        aux_models=aux,
        copilots=bound,
        forget_sets={n: forget_sets.manifest_entry(paths[n], s) for n, s in loaded.items()},
        channel=channel,
    )
    return Deployment(manifest, loaded)
