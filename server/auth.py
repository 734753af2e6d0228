"""Optional bearer-key authentication for the /v1 routes, and who a request counts as.

A request that passed :class:`APIKeyAuth` carries the index of the configured key it matched
(:func:`validated_key`); the rate limiter keys on that, never on the bearer string itself.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from .errors import APIError

#: ``request.state`` attribute holding the index of the configured key a request matched.
_STATE_KEY = "corrigo_api_key_index"


def validated_key(request: Request) -> str | None:
    """An id of the configured API key ``request`` authenticated with (its index in the
    config), or None (no keys configured, or a route without authentication)."""
    index = getattr(request.state, _STATE_KEY, None)
    return None if index is None else str(index)


def client_id(request: Request) -> str:
    """Who a rate limit applies to: the configured API key the request's bearer token matched,
    else the client's address. An unchecked bearer string never counts: a client could mint a
    fresh one per request."""
    key = validated_key(request)
    if key is not None:
        return "key:" + key
    return "addr:" + (request.client.host if request.client else "unknown")


def keyless_exposure_warning(host: str, keys: list[str]) -> str | None:
    """The warning for a server without API keys listening beyond loopback, else None."""
    if keys or _loopback(host):
        return None
    return (
        f"serving without API keys on {host}: anyone who can reach this address (and any web "
        "page a browser on this network opens) can use the server; set [auth] api_keys, "
        "listen on 127.0.0.1, and consider [server] trusted_hosts"
    )


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


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
        matched: int | None = None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(supplied, key):
                matched = index
        if matched is None:
            raise APIError(
                401,
                "Incorrect API key provided.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        setattr(request.state, _STATE_KEY, matched)
