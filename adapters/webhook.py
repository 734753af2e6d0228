"""The ``webhook`` verifier: POST the candidate to a URL and read the verdict back.

Request body: ``{"candidate": str, "messages": [...], "metadata": {...}}``. The endpoint
answers ``{"accepted": bool, "score": float (optional, default 1/0), "feedback": str
(optional)}``. Timeouts, connection errors and 5xx answers are retried (``retries`` times,
exponential backoff); what still fails is a rejection whose details say why.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Literal

import httpx
from pydantic import Field, FiniteFloat, field_validator

from decoding.refinement.model_verifiers import check_url
from decoding.refinement.verdict import Verdict
from decoding.refinement.verifier import VerifierParams, VerifyContext, register_verifier


class WebhookParams(VerifierParams):
    type: Literal["webhook"] = "webhook"
    url: str
    timeout: FiniteFloat = Field(5.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=5)
    #: Passed to the endpoint unchanged (e.g. a task id).
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: Set when the endpoint's verdict is ground truth (then flips are counted).
    exact: bool = False

    _url = field_validator("url")(check_url)


class WebhookError(RuntimeError):
    pass


class WebhookVerifier:
    name = "webhook"
    #: Backoff before retry k is BACKOFF * 2**k seconds.
    BACKOFF = 0.2

    def __init__(self, params: WebhookParams) -> None:
        self.params = params
        self.exact = params.exact

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        body = {
            "candidate": candidate,
            "messages": [dict(m) for m in ctx.messages],
            "metadata": self.params.metadata,
        }
        answer = await self._post(body)
        accepted = answer.get("accepted")
        if not isinstance(accepted, bool):
            raise WebhookError(f"{self.params.url} answered without a boolean 'accepted'")
        score = answer.get("score", 1.0 if accepted else 0.0)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise WebhookError(f"{self.params.url} answered a non-numeric 'score'")
        feedback = answer.get("feedback") or ""
        return Verdict(self.name, accepted, min(max(float(score), 0.0), 1.0), str(feedback))

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        async with httpx.AsyncClient(timeout=self.params.timeout, trust_env=False) as client:
            for attempt in range(self.params.retries + 1):
                if attempt:
                    await asyncio.sleep(self.BACKOFF * 2 ** (attempt - 1))
                try:
                    response = await client.post(self.params.url, json=body)
                except httpx.HTTPError as exc:
                    last = exc
                    continue
                if response.status_code >= 500:
                    last = WebhookError(f"{self.params.url} answered {response.status_code}")
                    continue
                if response.status_code >= 400:
                    raise WebhookError(f"{self.params.url} answered {response.status_code}")
                try:
                    payload = response.json()
                except ValueError:
                    raise WebhookError(f"{self.params.url} did not answer JSON") from None
                if not isinstance(payload, dict):
                    raise WebhookError(f"{self.params.url} did not answer a JSON object")
                return payload
        raise WebhookError(
            f"{self.params.url} failed after {self.params.retries + 1} attempts: {last}"
        )


register_verifier("webhook", WebhookParams, WebhookVerifier)
