"""Chat generations on any OpenAI-compatible server (the ``judge`` verifier's ``url``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import httpx

from decoding.refinement.generation import GenerateFn, Generation, Message


def remote_generate(
    url: str, model: str | None, api_key_env: str | None, timeout: float = 60.0
) -> GenerateFn:
    """A ``generate`` that POSTs to ``{url}/chat/completions`` (``url`` ends in ``/v1``).
    ``api_key_env`` names the server-side environment variable holding the key."""
    headers = {}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise RuntimeError(f"environment variable {api_key_env} is not set on the server")
        headers["Authorization"] = f"Bearer {key}"

    async def generate(
        messages: Sequence[Message],
        *,
        n: int = 1,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        body: dict = {"messages": [dict(m) for m in messages], "n": n}
        if model is not None:
            body["model"] = model
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.post(
                f"{url.rstrip('/')}/chat/completions", json=body, headers=headers
            )
        response.raise_for_status()
        payload = response.json()
        tokens = (payload.get("usage") or {}).get("completion_tokens", 0)
        choices = payload["choices"]
        return [
            Generation(
                c["message"].get("content") or "",
                tokens // max(len(choices), 1),
                c.get("finish_reason"),
            )
            for c in choices
        ]

    return generate
