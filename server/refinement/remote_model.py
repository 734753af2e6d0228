"""Chat generations on any OpenAI-compatible server (the ``judge`` verifier's remote models).

Two kinds of caller: a judge the server's config declares (``[judges.NAME]``: its URL, model
and key, the key read from the environment once, at start-up, by :func:`configured_judges`),
and a request's own keyless ``url`` (already through the allow-list). The POST is
server/refinement/outbound.py's; failures raise
:class:`~server.refinement.outbound.OutboundError` with details for the server log only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from decoding.refinement.generation import GenerateFn, Generation, Message

from .outbound import OutboundError, post_json

#: Seconds one remote generation may take, connect to last byte.
TIMEOUT = 60.0


class JudgeConfigError(ValueError):
    """A configured judge cannot be used (its key's environment variable is not set)."""


def remote_generate(
    url: str, model: str | None, api_key: str | None = None, timeout: float = TIMEOUT
) -> GenerateFn:
    """A ``generate`` that POSTs to ``{url}/chat/completions`` (``url`` ends in ``/v1``),
    sending ``api_key`` as the bearer token when given."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    endpoint = f"{url.rstrip('/')}/chat/completions"

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
        status, content = await post_json(endpoint, body, timeout=timeout, headers=headers)
        if not 200 <= status < 300:
            raise OutboundError(f"{endpoint} answered {status}")
        try:
            return _generations(json.loads(content))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise OutboundError(f"{endpoint} answered no chat completion: {exc!r}") from None

    return generate


def configured_judges(
    judges: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, GenerateFn]:
    """``generate`` per configured judge (``url``, ``model``, ``api_key_env`` attributes),
    each holding its key. A judge whose key variable is unset or empty is a
    :class:`JudgeConfigError` naming the judge and the variable (an operator error, at
    start-up; requests never see it)."""
    out = {}
    for name, spec in judges.items():
        key = None
        if spec.api_key_env is not None:
            key = environ.get(spec.api_key_env)
            if not key:
                raise JudgeConfigError(
                    f"judges.{name}.api_key_env: the environment variable "
                    f"{spec.api_key_env} is not set (or empty)"
                )
        out[name] = remote_generate(spec.url, spec.model, key)
    return out


def _generations(payload: Any) -> list[Generation]:
    tokens = (payload.get("usage") or {}).get("completion_tokens", 0)
    choices = payload["choices"]
    if not isinstance(choices, list) or not choices:
        raise ValueError("no choices")
    return [
        Generation(
            str(c["message"].get("content") or ""),
            int(tokens) // len(choices),
            c.get("finish_reason"),
        )
        for c in choices
    ]
