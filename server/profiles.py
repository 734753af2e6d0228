"""Profiles: named bundles of the served model and a default correction.

Each profile is listed in /v1/models and can be named as ``model`` by clients that cannot send
extra body fields; the request's own ``correction`` is laid over the profile's, except for the
corrections the profile enforces (``[profiles.NAME] enforce``): a request naming one of those is
refused, so it can neither weaken nor remove it. An operator who enforces corrections also hides
the served model itself (``[model] public = false``, :class:`Catalog`): otherwise a client names
the served model instead and gets no correction at all.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.registry import DEFAULT, Registry

from .config import ProfileConfig
from .errors import APIError


class ProfileError(ValueError):
    """A profile that cannot be served; the message names it."""


@dataclass(frozen=True)
class Profile:
    name: str
    correction: Mapping[str, Any]
    #: Keys of ``correction`` a request may not name (server/corrections.py take_correction).
    enforced: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Catalog:
    """The model ids a request may name: the profiles, and the served model when public."""

    served: str
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    #: False: the served model's own id is answered as an unknown model.
    base_public: bool = True

    @property
    def listed(self) -> list[str]:
        return [*([self.served] if self.base_public else []), *self.profiles]

    def resolve(
        self, requested: Any, adapters: Collection[str] = frozenset()
    ) -> tuple[str, Profile | None]:
        """The model id a request names (the served model when it names none and that is
        public) and its profile; 404 for any other id, the hidden served model's included.
        ``adapters``: the LoRA adapters the engine serves, each a model id of its own while the
        served model is public (hidden, its adapters would step around the profiles too)."""
        if isinstance(requested, str) and requested in adapters and self.base_public:
            return requested, None
        if requested is None and self.base_public:
            return self.served, None
        if requested is None:
            raise APIError(
                400,
                f"'model' is required: name one of {', '.join(self.listed)}.",
                param="model",
            )
        if isinstance(requested, str) and requested in self.profiles:
            return requested, self.profiles[requested]
        if requested == self.served and self.base_public:
            return self.served, None
        shown = str(requested)[:256]
        raise APIError(
            404,
            f"The model '{shown}' does not exist. Models served here: {', '.join(self.listed)}.",
            param="model",
            code="model_not_found",
        )


def load_profiles(
    profiles: Mapping[str, ProfileConfig],
    served_model: str,
    context: Mapping[str, Any],
    registry: Registry = DEFAULT,
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
                config.correction,
                registry=registry,
                context=context,
                prefix=f"profiles.{name}.correction",
            )
        except CorrectionError as exc:
            raise ProfileError(exc.message) from None
        out[name] = Profile(name, config.correction, _enforced(name, config))
    return out


def _enforced(name: str, config: ProfileConfig) -> frozenset[str]:
    if config.enforce is True:
        return frozenset(config.correction)
    if config.enforce is False:
        return frozenset()
    unknown = sorted(set(config.enforce) - set(config.correction))
    if unknown:
        raise ProfileError(
            f"profiles.{name}.enforce: {', '.join(unknown)} not in the profile's correction"
        )
    return frozenset(config.enforce)


def catalog(
    profiles: Mapping[str, Profile], served_model: str, *, base_public: bool = True
) -> Catalog:
    """The deployment's :class:`Catalog`; a hidden served model needs a profile to serve."""
    if not base_public and not profiles:
        raise ProfileError("model.public = false needs at least one [profiles.NAME] to serve")
    return Catalog(served_model, dict(profiles), base_public)
