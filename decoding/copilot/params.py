"""The request's ``correction.copilot`` object."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import ConfigDict, Field, FiniteFloat, ValidationInfo, field_validator

from ..params import CorrectionParams

#: Validation context key listing the copilot names the deployment declares (each one already
#: checked, at start-up, to be bound to the served model).
COPILOTS_CONTEXT = "copilots"

#: Where the rectification is added (decoding/copilot/fusion.py).
Space = Literal["logits", "probs"]
SPACES: tuple[str, ...] = get_args(Space)


class CopilotParams(CorrectionParams):
    """``{"name": NAME, "lambda": 1.0, "space": "logits" | "probs"}``; ``lambda`` and
    ``space`` default to the checkpoint's (recorded when it was trained)."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    name: str
    lambda_: FiniteFloat | None = Field(None, alias="lambda", ge=0)
    space: Space | None = None

    @field_validator("name")
    @classmethod
    def _known_copilot(cls, name: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get(COPILOTS_CONTEXT)
        if known is not None and name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ValueError(
                f"unknown copilot '{name}' for the served model (copilots declared for it: "
                f"{listed})"
            )
        return name
