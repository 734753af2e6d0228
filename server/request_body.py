"""Reading a request body: JSON within the server's size, value-count and depth limits."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from .config import LimitsConfig
from .errors import APIError

#: Media types a POST body may declare (parameters such as ``charset`` aside).
JSON_MEDIA_TYPE = "application/json"


async def read_json(raw: Request, limits: LimitsConfig) -> dict[str, Any]:
    """The request body as a JSON object, within the size, container and depth limits.

    ``application/json`` is required (415 otherwise): an HTML form or a ``fetch`` without a
    preflight can only send ``text/plain`` or form types, so a web page cannot post here.
    """
    media = raw.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != JSON_MEDIA_TYPE:
        shown = f"'{media[:100]}'" if media else "none"
        raise APIError(
            415,
            f"Unsupported content type ({shown}): send the body as {JSON_MEDIA_TYPE}.",
            code="unsupported_media_type",
        )
    max_bytes = limits.max_request_bytes
    declared = raw.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    async for part in raw.stream():
        body += part
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    # Parsing holds the event loop (json's C parser keeps the GIL, so a thread would not
    # help) for a time that grows with the number of values: bound them first, at C speed.
    containers = body.count(b"[") + body.count(b"{")
    if containers + body.count(b",") > limits.max_json_values:
        raise APIError(
            413,
            f"The request body holds more than {limits.max_json_values} JSON values (counted "
            "as commas and opening brackets, those inside strings included).",
            code="request_too_large",
        )
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(
            400, f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    except RecursionError:
        raise _too_deep(limits.max_json_depth) from None
    except (ValueError, MemoryError) as exc:  # e.g. an integer with too many digits
        raise APIError(
            400, f"The request body is not usable JSON: {type(exc).__name__}.", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    if containers > limits.max_json_depth and json_depth(payload) > limits.max_json_depth:
        raise _too_deep(limits.max_json_depth)
    return payload


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), iteratively; lists of
    scalars are skipped at C speed."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        items = node.values() if isinstance(node, dict) else node
        kinds = set(map(type, items))
        if dict in kinds or list in kinds:
            stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return deepest


def _too_deep(max_depth: int) -> APIError:
    return APIError(
        400,
        f"The request body nests arrays and objects deeper than {max_depth} levels.",
        code="invalid_json",
    )


def _too_large(max_bytes: int) -> APIError:
    return APIError(
        413, f"The request body exceeds the limit of {max_bytes} bytes.", code="request_too_large"
    )
