"""Profiles: named bundles of the served model and a default correction.

Each profile is listed in /v1/models and can be named as ``model`` by clients that cannot send
extra body fields; the request's own ``correction`` is laid over the profile's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from decoding.correction import CorrectionError, parse_correction

from .config import ProfileConfig


class ProfileError(ValueError):
    """A profile that cannot be served; the message names it."""


@dataclass(frozen=True)
class Profile:
    name: str
    correction: Mapping[str, Any]


def load_profiles(
    profiles: Mapping[str, ProfileConfig], served_model: str, context: Mapping[str, Any]
) -> dict[str, Profile]:
    """Check every profile against the deployment (model, correction) at start-up."""
    out: dict[str, Profile] = {}
    for name, config in profiles.items():
        if name == served_model:
            raise ProfileError(f"profiles.{name}: the name is the served model's id; pick another")
        if config.model not in (None, served_model):
            raise ProfileError(
                f"profiles.{name}.model: '{config.model}' is not served here (served: {served_model})"
            )
        try:
            parse_correction(
                config.correction, context=context, prefix=f"profiles.{name}.correction"
            )
        except CorrectionError as exc:
            raise ProfileError(exc.message) from None
        out[name] = Profile(name, config.correction)
    return out
