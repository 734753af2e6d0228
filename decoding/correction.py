"""Validating a request's ``correction`` object against a registry (decoding/registry.py).

Each key names a per-step correction of the registry, or ``refinement``; any other key is
refused, naming the corrections this server serves. The result is a
:class:`~decoding.spec.CorrectionSpec`; :func:`decode_wire` re-validates the per-step part in
the engine process (it trusts no caller).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .params import CorrectionError, CorrectionParams
from .refinement.params import REFINEMENT, RefinementParams
from .registry import DEFAULT, Registry
from .spec import WIRE_KEY, CorrectionSpec


def parse_correction(
    payload: Any,
    *,
    registry: Registry = DEFAULT,
    context: Mapping[str, Any] | None = None,
    prefix: str = "correction",
) -> CorrectionSpec:
    """Validate a request's ``correction`` object.

    ``context`` is what the deployment declares (e.g. its auxiliary model names), passed to the
    corrections' validators. Raises :class:`CorrectionError` naming the first offending field
    (``correction.<key>...``).
    """
    if payload is None:
        return CorrectionSpec()
    if not isinstance(payload, Mapping):
        raise CorrectionError(f"'{prefix}' must be an object, got {type(payload).__name__}", prefix)
    known = (*registry.names, REFINEMENT)
    for name in payload:
        if name not in known:
            param = f"{prefix}.{name}"
            raise CorrectionError(
                f"Unknown field '{param}'. Corrections served here: {', '.join(known)}.", param
            )
    context = dict(context or {})
    steps: dict[str, CorrectionParams] = {}
    for correction in registry:  # registry order: the order they run in
        if correction.name in payload:
            steps[correction.name] = _validate(
                correction.params, payload[correction.name], context, f"{prefix}.{correction.name}"
            )
    refinement = None
    if REFINEMENT in payload:
        refinement = _validate(
            RefinementParams, payload[REFINEMENT], context, f"{prefix}.{REFINEMENT}"
        )
    return CorrectionSpec(steps, refinement)


def decode_wire(
    value: Any, *, registry: Registry = DEFAULT, context: Mapping[str, Any] | None = None
) -> CorrectionSpec:
    """Inverse of :meth:`CorrectionSpec.to_wire`, re-validating (the engine trusts no caller)."""
    where = f"vllm_xargs.{WIRE_KEY}"
    if not isinstance(value, str):
        raise CorrectionError(
            f"extra_args[{WIRE_KEY!r}] must be the JSON string corrigo writes, got "
            f"{type(value).__name__}",
            where,
        )
    try:
        payload = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CorrectionError(
            f"extra_args[{WIRE_KEY!r}] is not valid JSON: {exc.msg}", where
        ) from None
    if isinstance(payload, Mapping) and REFINEMENT in payload:
        raise CorrectionError(f"extra_args[{WIRE_KEY!r}] carries per-step corrections only", where)
    return parse_correction(payload, registry=registry, context=context)


def _validate(
    model: type[CorrectionParams], value: Any, context: dict[str, Any], param: str
) -> Any:
    try:
        return model.model_validate(value, context=context)
    except ValidationError as exc:
        raise _first_error(exc, param) from None


def _first_error(exc: ValidationError, prefix: str) -> CorrectionError:
    err = exc.errors()[0]
    nested = getattr((err.get("ctx") or {}).get("error"), "path", ())
    where = ".".join(str(part) for part in (prefix, *err["loc"], *nested))
    message = err["msg"].removeprefix("Value error, ")
    return CorrectionError(f"Invalid '{where}': {message}", where)
