"""Verifiers that ask a model: ``p_true`` (self-evaluation on this engine) and ``judge``.

Their verdicts are opinions, not ground truth (``exact`` is False): the loop reports no flips
for them unless the request also gives a ``truth`` verifier.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, FiniteFloat, ValidationInfo, field_validator, model_validator

from ..params import NestedFieldError
from .generation import user_text
from .templates import check_template, fill
from .urls import check_url
from .verdict import Verdict
from .verifier import VerifierParams, VerifierType, VerifyContext

#: Validation context key: the names of the judges the server's config declares
#: (``[judges.NAME]``); absent: any name (library use).
JUDGES_CONTEXT = "verifier_judges"

P_TRUE_PROMPT = (
    "Question: {question}\n"
    "Proposed answer: {answer}\n"
    "Is the proposed answer:\n"
    " (A) True\n"
    " (B) False\n"
    "The proposed answer is:"
)


#: P(True) after the model's own samples (Kadavath et al. 2022, section 3.3: "brainstorming"
#: several T = 1 samples before asking improves the self-evaluation).
P_TRUE_SAMPLES_PROMPT = (
    "Question: {question}\n"
    "Here are some brainstormed answers:\n{samples}\n"
    "Possible answer: {answer}\n"
    "Is the possible answer:\n"
    " (A) True\n"
    " (B) False\n"
    "The possible answer is:"
)


def _check_template(template: str, **fields: str) -> str:
    return check_template(template, *fields)


class PTrueParams(VerifierParams):
    """P(True) (Kadavath et al. 2022): one extra forward on this engine over :data:`P_TRUE_PROMPT`.
    ``score = p(" A") / (p(" A") + p(" B"))`` from the next-token distribution; accept when
    ``score >= threshold``."""

    type: Literal["p_true"] = "p_true"
    threshold: FiniteFloat = Field(0.5, ge=0, le=1)
    prompt: str = P_TRUE_PROMPT
    #: With ``samples > 0``, the model first draws that many answers to the request (at
    #: ``samples_temperature``, once per request: every candidate is judged after the same
    #: ones) and is asked over ``samples_prompt``, which shows them.
    samples: int = Field(0, ge=0, le=8)
    samples_temperature: FiniteFloat = Field(1.0, ge=0, le=2)
    samples_prompt: str = P_TRUE_SAMPLES_PROMPT

    @field_validator("prompt")
    @classmethod
    def _template(cls, prompt: str) -> str:
        return _check_template(prompt, question="", answer="")

    @field_validator("samples_prompt")
    @classmethod
    def _samples_template(cls, prompt: str) -> str:
        return _check_template(prompt, question="", samples="", answer="")


class PTrueVerifier:
    name = "p_true"
    exact = False
    #: How many top next tokens to read; " A" and " B" are nearly always among them.
    TOP = 20

    #: Characters of each sample shown (a bound on the prompt).
    SAMPLE_CHARS = 500

    def __init__(self, params: PTrueParams) -> None:
        self.params = params
        # Built per request (decoding/refinement/loop.py), so these are the request's samples.
        self._samples: list[str] | None = None
        self._drawing = asyncio.Lock()

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        if ctx.services.next_token is None:
            raise RuntimeError("p_true needs the server's engine (Services.next_token)")
        question = user_text(ctx.messages).strip()
        if self.params.samples:
            samples = await self._own_samples(ctx)
            prompt = fill(
                self.params.samples_prompt,
                question=question,
                samples="\n".join(samples),
                answer=candidate.strip(),
            )
        else:
            prompt = fill(self.params.prompt, question=question, answer=candidate.strip())
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

    async def _own_samples(self, ctx: VerifyContext) -> list[str]:
        """The model's samples for this request, drawn by the first verification (later and
        concurrent ones await the same draw)."""
        if ctx.services.generate is None:
            raise RuntimeError("p_true with samples needs the server's engine (Services.generate)")
        async with self._drawing:
            if self._samples is None:
                self._samples = await self._draw(ctx)
        return self._samples

    async def _draw(self, ctx: VerifyContext) -> list[str]:
        assert ctx.services.generate is not None
        generations = await ctx.services.generate(
            ctx.messages, n=self.params.samples, temperature=self.params.samples_temperature
        )
        return [" ".join(g.text.split())[: self.SAMPLE_CHARS] for g in generations]


JUDGE_PROMPT = (
    "You are a strict grader.\n\nRequest:\n{question}\n\nResponse:\n{answer}\n\n"
    "Is the response correct and does it do what the request asks? Reply with one word, "
    "CORRECT or INCORRECT, then one sentence saying why."
)

_VERDICT_WORD = re.compile(r"\b(incorrect|correct|yes|no)\b", re.I)


class JudgeParams(VerifierParams):
    """A model grades the answer: this server's engine (no ``judge``, no ``url``), a judge the
    server's config declares (``judge``: its name; it brings its URL, model and key), or a
    keyless OpenAI-compatible ``url`` the allow-list admits (``model`` names the model there).
    The judge's first CORRECT/INCORRECT (or yes/no) is the verdict.

    Credentials are server-side only: a client naming an environment variable
    (``api_key_env``) is refused, whether or not it exists."""

    type: Literal["judge"] = "judge"
    judge: str | None = None
    url: str | None = None
    model: str | None = None
    prompt: str = JUDGE_PROMPT
    max_tokens: int = Field(32, ge=1, le=1024)

    _url = field_validator("url")(check_url)

    @model_validator(mode="before")
    @classmethod
    def _no_client_credentials(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "api_key_env" in value:
            raise NestedFieldError(
                "judge credentials are the server's: name a judge its config declares "
                "with 'judge' (api_key_env is not accepted from requests)",
                ("api_key_env",),
            )
        return value

    @field_validator("judge")
    @classmethod
    def _known_judge(cls, name: str | None, info: ValidationInfo) -> str | None:
        judges = (info.context or {}).get(JUDGES_CONTEXT)
        if name is None or judges is None or name in judges:
            return name
        if not judges:
            raise ValueError(
                f"unknown judge {name!r}: this server declares no judges ([judges.NAME])"
            )
        raise ValueError(f"unknown judge {name!r}; this server has: {', '.join(sorted(judges))}")

    @model_validator(mode="after")
    def _one_destination(self) -> JudgeParams:
        if self.judge is not None:
            for key in ("url", "model"):
                if getattr(self, key) is not None:
                    raise NestedFieldError(
                        f"'{key}' cannot be given with 'judge': the server's config sets it",
                        (key,),
                    )
        return self

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
        if self.params.judge is not None:
            generate = services.judges.get(self.params.judge)
            if generate is None:
                raise RuntimeError(f"judge {self.params.judge!r} is not in Services.judges")
        elif self.params.url is not None:
            if services.remote is None:
                raise RuntimeError("judge with a url needs Services.remote")
            generate = services.remote(self.params.url, self.params.model)
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


P_TRUE = VerifierType(PTrueParams, PTrueVerifier)
JUDGE = VerifierType(JudgeParams, JudgeVerifier)
