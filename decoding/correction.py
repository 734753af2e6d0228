"""The per-request ``correction`` object: its validated schema and its wire form.

A request names the corrections it wants as top-level keys of one object::

    {"proxy_tuning": {...}, "unlearning": {...}}

Each key is a plugin name. A plugin makes itself available by registering the pydantic model of
its parameters with :func:`register_plugin`; names the product defines but this build does not
serve yet are refused with a message saying so, and any other key is refused as unknown. The
validated spec crosses into the engine process as one JSON string in ``SamplingParams.extra_args``
(vLLM only carries flat ``str | int | float | list`` values there), under :data:`WIRE_KEY`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

#: Key of ``SamplingParams.extra_args`` (the OpenAI field ``vllm_xargs``) that carries the spec.
WIRE_KEY = "corrigo"

#: Every correction the product defines, in the order per-step plugins run on a row's logits:
#: proxy-tuning shift, copilot rectification, unlearning penalties and
#: blocks (blocks last). Refinement wraps whole generations and is not a per-step plugin.
PLUGIN_NAMES: tuple[str, ...] = ("proxy_tuning", "copilot", "unlearning", "refinement")


class PluginParams(BaseModel):
    """Base of every plugin's parameter model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_REGISTRY: dict[str, type[PluginParams]] = {}


def register_plugin(name: str, params: type[PluginParams]) -> None:
    """Make the plugin ``name`` available, validating its parameters with ``params``."""
    if name not in PLUGIN_NAMES:
        raise ValueError(
            f"{name!r} is not a correction corrigo defines; expected one of {PLUGIN_NAMES}"
        )
    _REGISTRY[name] = params


def available_plugins() -> tuple[str, ...]:
    """Names of the plugins this build serves, in pipeline order."""
    return tuple(name for name in PLUGIN_NAMES if name in _REGISTRY)


class NestedFieldError(ValueError):
    """Raised by a validator of a dynamically typed field (e.g. a refinement verifier) to name
    the offending key below the field: ``path`` continues the field's location."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


class CorrectionError(ValueError):
    """A ``correction`` object that cannot be served; ``param`` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class CorrectionSpec:
    """A validated correction: plugin name -> that plugin's validated parameters."""

    plugins: Mapping[str, PluginParams] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The requested plugins, in pipeline order."""
        return tuple(name for name in PLUGIN_NAMES if name in self.plugins)

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def to_json(self) -> dict[str, Any]:
        return {name: self.plugins[name].model_dump(mode="json") for name in self.names}

    def to_wire(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


def parse_correction(
    payload: Any, *, context: Mapping[str, Any] | None = None, prefix: str = "correction"
) -> CorrectionSpec:
    """Validate a request's ``correction`` object.

    ``context`` is what the deployment declares (e.g. its auxiliary model names), passed to the
    plugins' validators. Raises :class:`CorrectionError` naming the first offending field
    (``correction.<key>...``).
    """
    if payload is None:
        return CorrectionSpec()
    if not isinstance(payload, Mapping):
        raise CorrectionError(f"'{prefix}' must be an object, got {type(payload).__name__}", prefix)
    plugins: dict[str, PluginParams] = {}
    for name, value in payload.items():
        param = f"{prefix}.{name}"
        if name not in PLUGIN_NAMES:
            raise CorrectionError(
                f"Unknown field '{param}'. Known corrections: {', '.join(PLUGIN_NAMES)}.", param
            )
        model = _REGISTRY.get(name)
        if model is None:
            served = ", ".join(available_plugins()) or "none"
            raise CorrectionError(
                f"'{param}' is not available on this server (corrections served here: {served}).",
                param,
            )
        try:
            plugins[name] = model.model_validate(value, context=dict(context or {}))
        except ValidationError as exc:
            raise _first_error(exc, param) from None
    return CorrectionSpec(plugins)


def decode_wire(value: Any, *, context: Mapping[str, Any] | None = None) -> CorrectionSpec:
    """Inverse of :meth:`CorrectionSpec.to_wire`, re-validating (the engine trusts no caller)."""
    if not isinstance(value, str):
        raise CorrectionError(
            f"extra_args[{WIRE_KEY!r}] must be the JSON string corrigo writes, got {type(value).__name__}",
            f"vllm_xargs.{WIRE_KEY}",
        )
    try:
        payload = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CorrectionError(
            f"extra_args[{WIRE_KEY!r}] is not valid JSON: {exc.msg}", f"vllm_xargs.{WIRE_KEY}"
        ) from None
    return parse_correction(payload, context=context)


def _first_error(exc: ValidationError, prefix: str) -> CorrectionError:
    err = exc.errors()[0]
    nested = getattr((err.get("ctx") or {}).get("error"), "path", ())
    where = ".".join(str(part) for part in (prefix, *err["loc"], *nested))
    message = err["msg"].removeprefix("Value error, ")
    return CorrectionError(f"Invalid '{where}': {message}", where)
