"""The deployment manifest (adapters/manifest.py), built once from the config at start-up.

Each declaration is checked here, before the engine starts, so a deployment that cannot serve
fails with a message naming the key: auxiliary models must share the served model's tokenizer,
copilots must be bound to it, forget sets must be private and valid. The forget sets loaded here
are the gate's; the manifest names them by path and digest for the engine side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters import aux_models
from adapters.aux_budget import Declared
from adapters.aux_memory import copilot_shape, model_shape
from adapters.engine import ServedModel
from adapters.manifest import DeploymentManifest, ModelEntry, ReportChannel
from decoding.copilot import runner as copilots
from decoding.proxy_tuning.prompts import PromptFormat, PromptFormatError, load_format
from decoding.registry import Registry, RegistryError
from decoding.unlearning import ForgetSet
from decoding.unlearning import loading as forget_sets

from .config import Config, ConfigError


@dataclass(frozen=True)
class Deployment:
    """The manifest, and the forget sets the server's gate uses (the same content)."""

    manifest: DeploymentManifest
    forget_sets: dict[str, ForgetSet]
    #: The corrections served (built-ins and the operator's extras: decoding/registry.py).
    registry: Registry
    #: The auxiliary models that see chat requests in their own format (``chat_template``),
    #: by name (decoding/proxy_tuning/prompts.py).
    prompt_formats: dict[str, PromptFormat] = field(default_factory=dict)


def build_deployment(config: Config, model: ServedModel, channel: ReportChannel) -> Deployment:
    aux = {}
    formats: dict[str, PromptFormat] = {}
    for name, spec in config.aux_models.items():
        path = aux_models.resolve_path(spec.path)
        aux_models.check_compatible(name, path, model.path)
        aux[name] = ModelEntry(path, spec.dtype)
        if spec.chat_template is not None:
            try:
                formats[name] = load_format(name, spec.chat_template, path)
            except PromptFormatError as exc:
                raise ConfigError(str(exc)) from None
    bound = {}
    for name, spec in config.copilots.items():
        path = str(Path(spec.path).expanduser().resolve())
        copilots.check_binding(name, path, model.path)
        bound[name] = ModelEntry(path, spec.dtype)
    paths = {name: forget_sets.resolve_path(s.path) for name, s in config.forget_sets.items()}
    loaded = forget_sets.load_all(paths)
    manifest = DeploymentManifest(
        aux_models=aux,
        copilots=bound,
        forget_sets={
            n: forget_sets.manifest_entry(paths[n], s, config.forget_sets[n].abstention)
            for n, s in loaded.items()
        },
        extra_corrections=tuple(config.corrections.extra),
        channel=channel,
    )
    try:
        registry = manifest.registry()
    except RegistryError as exc:
        raise ConfigError(f"corrections.extra: {exc}") from None
    return Deployment(manifest, loaded, registry, formats)


def aux_declared(manifest: DeploymentManifest) -> list[Declared]:
    """The auxiliary models and copilots of the deployment, sized from their configs, for the
    start-up memory check (adapters/aux_budget.py)."""
    aux = [
        Declared(f"aux_models.{name}", model_shape(entry.path), entry.dtype)
        for name, entry in manifest.aux_models.items()
    ]
    return aux + [
        Declared(f"copilots.{name}", copilot_shape(entry.path), entry.dtype)
        for name, entry in manifest.copilots.items()
    ]
