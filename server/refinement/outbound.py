"""One outbound HTTP POST, as verifiers that call out (webhook, remote judge) make it.

The URL has passed the allow-list (decoding/refinement/urls.py) in its canonical form; what
this adds is that nothing about the exchange is left to the remote or to the environment:

- redirects are not followed (a listed host could otherwise send the request anywhere);
- proxies and ``.netrc`` from the environment are ignored (``trust_env=False``);
- the whole exchange, connect to last byte, has one deadline (httpx's own timeouts apply per
  phase and per read, so a server dripping bytes could hold a request indefinitely);
- the answer is read up to ``max_bytes`` and no further, uncompressed (``Accept-Encoding:
  identity``; a compressed answer would not parse), so no small answer inflates in memory.

Failures raise :class:`OutboundError` with the details for the server log; callers never show
them to clients (decoding/refinement/run.py reports a generic failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

#: The most an answer may hold, in bytes.
MAX_ANSWER_BYTES = 1024 * 1024


class OutboundError(RuntimeError):
    """An outbound call failed; the message (URL, cause) is for the server log only."""


async def post_json(
    url: str,
    body: Any,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> tuple[int, bytes]:
    """POST ``body`` as JSON to ``url``; the status and the answer's bytes. Raises
    :class:`OutboundError` on connection failures, the deadline, redirects and oversized
    answers (status codes are the caller's to judge)."""
    try:
        async with asyncio.timeout(timeout):
            async with (
                httpx.AsyncClient(
                    timeout=timeout, trust_env=False, follow_redirects=False
                ) as client,
                client.stream(
                    "POST",
                    url,
                    json=body,
                    headers={**(headers or {}), "Accept-Encoding": "identity"},
                ) as response,
            ):
                if response.is_redirect:
                    raise OutboundError(f"{url} answered a redirect ({response.status_code})")
                chunks = []
                size = 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > max_bytes:
                        raise OutboundError(f"{url} answered more than {max_bytes} bytes")
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)
    except TimeoutError:
        raise OutboundError(f"{url} did not answer within {timeout} s") from None
    except httpx.HTTPError as exc:
        raise OutboundError(f"{url}: {type(exc).__name__}: {exc}") from exc
