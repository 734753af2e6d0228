"""What every correction's parameters share: the pydantic base and the validation errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Validation context key: true where a spec comes from corrigo's server (the engine side reads
#: the wire), so the fields only the server sets are admitted (the server refuses them from
#: clients: server/corrections.py).
SERVER_SET_CONTEXT = "server_set_fields"


class CorrectionParams(BaseModel):
    """Base of every correction's parameter model: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class RequestRefused(ValueError):
    """A correction's server-side step refuses the request (decoding/contract.py
    ``AdmissionStep``): the server answers ``status`` with an OpenAI error object."""

    def __init__(
        self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
