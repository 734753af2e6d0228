"""A request may only make a profile's unlearning policy stricter.

A profile's ``correction.unlearning.on_match`` (decoding/unlearning/policy.py) is a floor: a
request naming the profile may raise it (``steer < abstain < refuse``), never lower it, also
where the profile enforces ``unlearning`` (``[profiles.NAME] enforce``), where a request may
otherwise not name the correction at all. The forget set's own floor
(``[forget_sets.NAME] on_match``) is checked with the parameters
(decoding/unlearning/params.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from decoding.unlearning.policy import DEFAULT_ON_MATCH, ON_MATCH, stricter_or_equal

from .errors import APIError

NAME = "unlearning"
FIELD = "on_match"


def tightenings(defaults: Mapping[str, Any] | None, requested: Any) -> frozenset[str]:
    """The corrections the request only tightens (``{"unlearning"}`` when its
    ``correction.unlearning`` holds nothing but a valid ``on_match``); raises a 400 when the
    request's ``on_match`` is weaker than the profile's."""
    base = defaults.get(NAME) if isinstance(defaults, Mapping) else None
    ours = requested.get(NAME) if isinstance(requested, Mapping) else None
    if not isinstance(base, Mapping) or not isinstance(ours, Mapping):
        return frozenset()
    wanted = ours.get(FIELD)
    floor = base.get(FIELD, DEFAULT_ON_MATCH)
    if FIELD in ours and wanted is None and base.get(FIELD) is not None:
        # null would replace the profile's value when merged: it lowers it to the set's own.
        raise APIError(
            400,
            f"'correction.{NAME}.{FIELD}' may not remove the model's '{floor}'; leave it out "
            "or make it stricter (steer < abstain < refuse).",
            param=f"correction.{NAME}.{FIELD}",
            code="invalid_correction",
        )
    if wanted not in ON_MATCH:
        return frozenset()  # absent, or invalid: the parameters' validation names it
    if floor in ON_MATCH and not stricter_or_equal(wanted, floor):
        raise APIError(
            400,
            f"'correction.{NAME}.{FIELD}' may only make the model's '{floor}' stricter "
            "(steer < abstain < refuse).",
            param=f"correction.{NAME}.{FIELD}",
            code="invalid_correction",
        )
    return frozenset({NAME}) if set(ours) == {FIELD} else frozenset()
