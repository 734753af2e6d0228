"""Request-side handling of the ``correction`` object: validate, send to the engine, report.

The validated spec travels to the engine's logits processor (adapters/logits_processor.py) as
one JSON string in the request's ``vllm_xargs`` under :data:`decoding.correction.WIRE_KEY`;
vLLM copies ``vllm_xargs`` into ``SamplingParams.extra_args`` unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from adapters.request_reports import XARGS_KEY as REPORT_KEY
from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.pipeline import FORCED_STOPS, PIPELINE
from decoding.registry import Registry
from decoding.spec import WIRE_KEY, CorrectionSpec

from .errors import APIError
from .unlearning_policy import tightenings


def take_correction(
    body: dict[str, Any],
    registry: Registry,
    context: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    enforced: Collection[str] = frozenset(),
) -> CorrectionSpec | None:
    """Remove and validate ``body["correction"]`` laid over a profile's ``defaults`` (None
    when there is neither); 400 naming the field when it is wrong, or when it names one of the
    profile's ``enforced`` corrections at all (whatever the value: an enforced correction is
    neither weakened, replaced nor removed, so there is nothing to compare), except to make
    its unlearning policy stricter (server/unlearning_policy.py)."""
    xargs = body.get("vllm_xargs")
    for key in (WIRE_KEY, REPORT_KEY):
        if isinstance(xargs, dict) and key in xargs:
            raise APIError(
                400,
                f"'vllm_xargs.{key}' is reserved for corrigo; send corrections as 'correction'.",
                param=f"vllm_xargs.{key}",
            )
    if "correction" not in body and defaults is None:
        return None
    requested = body.pop("correction", None)
    tightened = tightenings(defaults, requested)  # 400 for a weaker policy than the profile's
    for name in sorted(set(enforced) - tightened):
        if isinstance(requested, Mapping) and name in requested:
            raise APIError(
                400,
                f"'correction.{name}' is enforced by the model this request names and cannot "
                "be changed or removed; send the request without it.",
                param=f"correction.{name}",
                code="correction_enforced",
            )
    if enforced and requested is not None and not isinstance(requested, Mapping):
        raise APIError(400, "'correction' must be an object.", param="correction")
    if defaults is not None and (requested is None or isinstance(requested, Mapping)):
        requested = merge_correction(defaults, requested or {})
    try:
        return parse_correction(requested, registry=registry, context=context)
    except CorrectionError as exc:
        raise APIError(400, exc.message, param=exc.param, code="invalid_correction") from None


def merge_correction(defaults: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` laid over ``defaults``: objects merge key by key, anything else replaces."""
    merged = dict(defaults)
    for key, value in request.items():
        base = merged.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_correction(base, value)
        else:
            merged[key] = value
    return merged


def wire_xargs(
    spec: CorrectionSpec | None, xargs: dict[str, Any] | None, ticket: list[int] | None = None
) -> dict[str, Any] | None:
    """The request's ``vllm_xargs`` with the spec's per-step corrections added (unchanged when
    it names none), and the report ``ticket`` the engine sends the request's figures under.
    Refinement wraps whole generations in the server and never reaches the engine."""
    if spec is None or not spec.steps:
        return xargs
    wired = {**(xargs or {}), WIRE_KEY: spec.to_wire()}
    if ticket is not None:
        wired[REPORT_KEY] = ticket
    return wired


def wants_figures(spec: CorrectionSpec | None, registry: Registry) -> bool:
    """Whether the request needs the engine's per-row figures: it names a per-step correction
    (the pipeline records its forced stops for every one; most plugins record their own)."""
    return spec is not None and bool(spec.steps)


def correction_report(
    spec: CorrectionSpec,
    registry: Registry,
    figures: Mapping[str, Mapping[str, float]] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """The ``correction`` object added to a response that asked for corrections: the names it
    applied, each per-step correction's own report from its figures over the request's steps
    (decoding/contract.py ``Correction.report``), and ``details`` built elsewhere (e.g. the
    unlearning gate's, ``unlearning=...``). ``forced_stops`` is added when the pipeline
    ended a row because its corrections left no token the engine allowed (decoding/pipeline.py):
    the number of such steps over the request's choices."""
    report: dict[str, Any] = {"plugins": list(spec.names)}
    forced = int((figures or {}).get(PIPELINE, {}).get(FORCED_STOPS, 0))
    if forced:
        report[FORCED_STOPS] = forced
    for name, params in spec.steps.items():
        if figures is not None and name in figures and name not in details:
            part = registry[name].report(params, figures[name])
            if part is not None:
                report[name] = part
    # A step with nothing to say (None) adds no key.
    return {**report, **{k: v for k, v in details.items() if v is not None}}
