"""The ``webhook`` verifier: POST the candidate to a URL and read the verdict back.

Request body: ``{"candidate": str, "messages": [...], "metadata": {...}}``, and
``"tool_calls": [{"name": str, "arguments": str}, ...]`` when the round's message made tool
calls. The endpoint
answers ``{"accepted": bool, "score": float (optional, default 1/0), "feedback": str
(optional)}``. Timeouts, connection errors and 5xx answers are retried (``retries`` times,
exponential backoff); what still fails is a rejection. The URL is the allow-list's canonical
form (decoding/refinement/urls.py) and the POST is outbound.py's (beside this: no redirects,
one deadline per attempt, bounded answer); why it failed goes to the server log, not the client.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Literal

from pydantic import Field, FiniteFloat, field_validator

from decoding.refinement.answers import tool_calls_of
from decoding.refinement.urls import check_url
from decoding.refinement.verdict import Verdict
from decoding.refinement.verifier import VerifierParams, VerifierType, VerifyContext

from .outbound import OutboundError, post_json


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


class WebhookError(OutboundError):
    pass


class WebhookVerifier:
    name = "webhook"
    #: Backoff before retry k is BACKOFF * 2**k seconds.
    BACKOFF = 0.2

    def __init__(self, params: WebhookParams) -> None:
        self.params = params
        self.exact = params.exact

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        body: dict[str, Any] = {
            "candidate": candidate,
            "messages": [dict(m) for m in ctx.messages],
            "metadata": self.params.metadata,
        }
        calls = tool_calls_of(candidate)
        if calls:  # the round's message made tool calls (decoding/refinement/answers.py)
            body["tool_calls"] = [call.to_json() for call in calls]
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
        url = self.params.url
        last: Exception | None = None
        for attempt in range(self.params.retries + 1):
            if attempt:
                await asyncio.sleep(self.BACKOFF * 2 ** (attempt - 1))
            try:
                status, content = await post_json(url, body, timeout=self.params.timeout)
            except OutboundError as exc:
                last = exc
                continue
            if status >= 500:
                last = WebhookError(f"{url} answered {status}")
                continue
            if status >= 300:
                raise WebhookError(f"{url} answered {status}")
            try:
                payload = json.loads(content)
            except ValueError:
                raise WebhookError(f"{url} did not answer JSON") from None
            if not isinstance(payload, dict):
                raise WebhookError(f"{url} did not answer a JSON object")
            return payload
        raise WebhookError(f"{url} failed after {self.params.retries + 1} attempts: {last}")


WEBHOOK = VerifierType(WebhookParams, WebhookVerifier)
