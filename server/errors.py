"""OpenAI-style error objects: ``{"error": {"message", "type", "param", "code"}}``.

Every error corrigo returns, its own or one vLLM's serving layer produced, goes through
:func:`error_response`, so clients see one shape with the OpenAI ``type`` for each status.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from decoding.params import RequestRefused

logger = logging.getLogger(__name__)

#: The ``error.type`` OpenAI's API uses for each status.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """Raise anywhere in a request to answer with an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    @classmethod
    def refused(cls, exc: RequestRefused) -> APIError:
        """A correction's refusal (decoding/params.py) as the error the client gets."""
        return cls(exc.status, exc.message, param=exc.param, code=exc.code)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, param=param, code=code), status_code=status, headers=headers
    )


def status_of(exc: BaseException) -> int:
    """The status a request that failed with ``exc`` is answered (and recorded) with."""
    if isinstance(exc, (APIError, RequestRefused)):
        return exc.status
    if isinstance(exc, (RecursionError, MemoryError)):
        return _backstop_error(exc).status
    return 500


def _backstop_error(exc: BaseException) -> APIError:
    if isinstance(exc, RecursionError):
        return APIError(400, "The request is nested too deeply to process.")
    return APIError(
        413,
        "The request needs more memory to process than this server allows.",
        code="request_too_large",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every failure path of ``app`` answer with an OpenAI error object."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(
            exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers
        )

    @app.exception_handler(RequestRefused)
    async def _refused(_: Request, exc: RequestRefused) -> JSONResponse:
        # A correction's admission step refused the request (decoding/contract.py).
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        where = f"'{param}': " if param else ""
        return error_response(400, f"Invalid request: {where}{err.get('msg')}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    @app.exception_handler(MemoryError)
    async def _input_too_big(request: Request, exc: Exception) -> JSONResponse:
        # Input nested deeper or larger than some parser or validator could follow: the
        # client's input, not a server fault (the body's depth and size are checked first;
        # this is the backstop).
        logger.warning("%s on %s %s", type(exc).__name__, request.method, request.url.path)
        err = _backstop_error(exc)
        return error_response(err.status, err.message, code=err.code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, f"Internal server error ({type(exc).__name__}); see the server log."
        )
