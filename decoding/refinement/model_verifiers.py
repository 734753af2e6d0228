"""Verifiers that ask a model: ``p_true`` (self-evaluation on this engine) and ``judge``.

Their verdicts are opinions, not ground truth (``exact`` is False): the loop reports no flips
for them unless the request also gives a ``truth`` verifier.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, FiniteFloat, ValidationInfo, field_validator

from .generation import user_text
from .templates import check_template
from .verdict import Verdict
from .verifier import VerifierParams, VerifyContext, register_verifier

#: Validation context key: URL prefixes the server lets requests send verifications to.
URL_PREFIXES_CONTEXT = "verifier_url_prefixes"

P_TRUE_PROMPT = (
    "Question: {question}\n"
    "Proposed answer: {answer}\n"
    "Is the proposed answer:\n"
    " (A) True\n"
    " (B) False\n"
    "The proposed answer is:"
)


def _check_template(template: str, **fields: str) -> str:
    return check_template(template, *fields)


def check_url(url: str | None, info: ValidationInfo) -> str | None:
    """``url`` must start with one of the prefixes the server's config allows."""
    if url is None:
        return None
    if not re.match(r"^https?://", url):
        raise ValueError("must be an http:// or https:// URL")
    prefixes = (info.context or {}).get(URL_PREFIXES_CONTEXT)
    if prefixes is not None and not any(url.startswith(prefix) for prefix in prefixes):
        allowed = ", ".join(prefixes) or "none (set [refinement] url_prefixes)"
        raise ValueError(f"this server does not send verifications to {url}; allowed: {allowed}")
    return url


class PTrueParams(VerifierParams):
    """P(True) (Kadavath et al. 2022): one extra forward on this engine over :data:`P_TRUE_PROMPT`.
    ``score = p(" A") / (p(" A") + p(" B"))`` from the next-token distribution; accept when
    ``score >= threshold``."""

    type: Literal["p_true"] = "p_true"
    threshold: FiniteFloat = Field(0.5, ge=0, le=1)
    prompt: str = P_TRUE_PROMPT

    @field_validator("prompt")
    @classmethod
    def _template(cls, prompt: str) -> str:
        return _check_template(prompt, question="", answer="")


class PTrueVerifier:
    name = "p_true"
    exact = False
    #: How many top next tokens to read; " A" and " B" are nearly always among them.
    TOP = 20

    def __init__(self, params: PTrueParams) -> None:
        self.params = params

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        if ctx.services.next_token is None:
            raise RuntimeError("p_true needs the server's engine (Services.next_token)")
        prompt = self.params.prompt.format(
            question=user_text(ctx.messages).strip(), answer=candidate.strip()
        )
        top = await ctx.services.next_token(prompt, self.TOP)
        p_a = math.exp(top[" A"]) if " A" in top else 0.0
        p_b = math.exp(top[" B"]) if " B" in top else 0.0
        score = p_a / (p_a + p_b) if p_a + p_b > 0 else 0.0
        accepted = score >= self.params.threshold
        feedback = "" if accepted else "The answer is probably not correct."
        return Verdict(
            self.name,
            accepted,
            score,
            feedback,
            details={"p_a": round(p_a, 6), "p_b": round(p_b, 6)},
        )


JUDGE_PROMPT = (
    "You are a strict grader.\n\nRequest:\n{question}\n\nResponse:\n{answer}\n\n"
    "Is the response correct and does it do what the request asks? Reply with one word, "
    "CORRECT or INCORRECT, then one sentence saying why."
)

_VERDICT_WORD = re.compile(r"\b(incorrect|correct|yes|no)\b", re.I)


class JudgeParams(VerifierParams):
    """A model grades the answer: this server's engine, or any OpenAI-compatible ``url`` (then
    ``model`` names the model there and ``api_key_env`` the server-side environment variable
    holding its key). The judge's first CORRECT/INCORRECT (or yes/no) is the verdict."""

    type: Literal["judge"] = "judge"
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    prompt: str = JUDGE_PROMPT
    max_tokens: int = Field(32, ge=1, le=1024)

    _url = field_validator("url")(check_url)

    @field_validator("prompt")
    @classmethod
    def _template(cls, prompt: str) -> str:
        return _check_template(prompt, question="", answer="")


class JudgeVerifier:
    name = "judge"
    exact = False

    def __init__(self, params: JudgeParams) -> None:
        self.params = params

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        services = ctx.services
        if self.params.url is not None:
            if services.remote is None:
                raise RuntimeError("judge with a url needs Services.remote")
            generate = services.remote(self.params.url, self.params.model, self.params.api_key_env)
        else:
            if services.generate is None:
                raise RuntimeError("judge needs the server's engine (Services.generate)")
            generate = services.generate
        prompt = self.params.prompt.format(
            question=user_text(ctx.messages).strip(), answer=candidate.strip()
        )
        reply = (
            await generate(
                [{"role": "user", "content": prompt}],
                max_tokens=self.params.max_tokens,
                temperature=0.0,
            )
        )[0].text
        match = _VERDICT_WORD.search(reply)
        word = match.group(1).lower() if match else None
        accepted = word in ("correct", "yes")
        feedback = "" if accepted else f"A grader found a problem: {reply.strip()[:500]}"
        return Verdict(
            self.name, accepted, 1.0 if accepted else 0.0, feedback, details={"judge": reply[:500]}
        )


register_verifier("p_true", PTrueParams, PTrueVerifier)
register_verifier("judge", JudgeParams, JudgeVerifier)
