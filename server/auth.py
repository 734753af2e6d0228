"""Optional bearer-key authentication for the /v1 routes."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import APIError


class APIKeyAuth:
    """FastAPI dependency: with keys configured, require ``Authorization: Bearer <key>``."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Compare against every key without stopping early, each in constant time, so the
        # response time says nothing about which key (or how much of one) matched.
        supplied = token.strip().encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(supplied, key)
        if not matched:
            raise APIError(
                401,
                "Incorrect API key provided.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
