"""Per-model prompts for proxy-tuning: each auxiliary model may see a chat request in its own
format (``[aux_models.NAME] chat_template``), as in the paper's main setting, where an untuned
base is steered by a chat-tuned expert and anti-expert.

A model's format (:class:`PromptFormat`):

- unset: the served model's own rendering; the model steps on the engine row's token ids, as
  every model did before per-model formats existed;
- ``"chat"``: the model's own tokenizer's chat template (its folder's ``tokenizer_config.json``);
- a path: the Jinja chat template in that file, rendered with the model's tokenizer;
- ``"base"``: no template. The text of each message (roles omitted) followed by a blank line
  (``"\\n\\n"``), with ``continue_final_message`` the last message's text without it; tokenized
  with the tokenizer's special tokens (e.g. a BOS), as ``/v1/completions`` would tokenize it.

Chat templates render as vLLM renders the served model's prompt: the template's text, then
tokenized without added special tokens (the template writes its own). Message contents given
as lists of parts are reduced to their text parts first. Rendering honours the request's
``add_generation_prompt`` and ``continue_final_message``.

Where the ids come from: the server renders each model's prompt once per engine request (the
correction's admission step, :class:`ProxyPrompts`; a refinement round renders its own
conversation) and sends the ids with the correction's parameters (``ProxyTuningParams.prompts``,
which only the server may set). Inside the engine the model then steps on
``its prompt ids + the row's generated ids``: proxy-tuning requires the models to share the
served model's vocabulary (adapters/aux_models.py checks it at start-up), so the generated ids
mean the same to every model and only the prompt differs. /v1/completions prompts are raw text
(or ids) and reach every model unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from transformers import AutoTokenizer

from ..contract import AdmissionStep, Admitted
from ..params import CorrectionParams, RequestRefused
from ..refinement.generation import content_text

#: The values of ``chat_template`` that name no file.
NamedFormat = Literal["base", "chat"]
NAMED_FORMATS: tuple[str, ...] = get_args(NamedFormat)

#: Characters of a chat template file read at most (a template is a few KB).
MAX_TEMPLATE_CHARS = 200_000


class PromptFormatError(ValueError):
    """A declared ``chat_template`` that cannot be used; the message names the key."""


@dataclass(frozen=True)
class PromptFormat:
    """How one auxiliary model's prompt is rendered from a chat request's messages."""

    #: The ``chat_template`` setting: "base", "chat" or the template file's path.
    setting: str
    #: The model's tokenizer (``transformers``), shared vocabulary with the served model.
    tokenizer: Any
    #: The Jinja template (None for "base").
    template: str | None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """The model's prompt ids for ``messages``."""
        plain = [
            {"role": str(m.get("role", "user")), "content": content_text(m.get("content"))}
            for m in messages
        ]
        if self.template is None:
            texts = [m["content"] for m in plain]
            text = "".join(f"{t}\n\n" for t in texts)
            if continue_final_message and texts:
                text = text.removesuffix("\n\n")
            return list(self.tokenizer(text).input_ids)
        text = self.tokenizer.apply_chat_template(
            plain,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            continue_final_message=continue_final_message,
        )
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)


def load_format(name: str, setting: str, model_path: str) -> PromptFormat:
    """The format ``[aux_models.NAME] chat_template = setting`` declares for the model in
    ``model_path``; :class:`PromptFormatError` when it cannot serve."""
    key = f"aux_models.{name}.chat_template"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise PromptFormatError(
            f"{key}: cannot load the tokenizer of {model_path}: {exc}"
        ) from None
    if setting == "base":
        return PromptFormat(setting, tokenizer, None)
    if setting == "chat":
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str) or not template.strip():
            raise PromptFormatError(
                f"{key}: 'chat' needs a chat template in {model_path}'s tokenizer; it has none "
                "(give a template file's path, or 'base')"
            )
    else:
        path = Path(setting).expanduser()
        try:
            with path.open(encoding="utf-8") as f:
                template = f.read(MAX_TEMPLATE_CHARS + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptFormatError(f"{key}: cannot read {path}: {exc}") from None
        if len(template) > MAX_TEMPLATE_CHARS or not template.strip():
            raise PromptFormatError(
                f"{key}: {path} must hold a Jinja chat template of at most "
                f"{MAX_TEMPLATE_CHARS} characters"
            )
    prompt = PromptFormat(setting, tokenizer, template)
    try:  # a template that cannot render a plain exchange is a configuration error
        prompt.render([{"role": "user", "content": "Hello."}])
    except Exception as exc:  # Jinja raises many types; all mean unusable
        raise PromptFormatError(f"{key}: the template does not render: {exc}") from None
    return prompt


@dataclass(frozen=True)
class _Request:
    """What :meth:`ProxyPrompts.prepare` took from a chat request for rendering."""

    messages: tuple[Mapping[str, Any], ...]
    add_generation_prompt: bool
    continue_final_message: bool


class ProxyPrompts(AdmissionStep):
    """Renders each auxiliary model's own prompt for a chat request that uses it (see the
    module docstring); its report lists the models that got their own prompt, with their
    format."""

    def __init__(self, formats: Mapping[str, PromptFormat]) -> None:
        self.formats = dict(formats)

    def applies(self, params: CorrectionParams) -> bool:
        """Only where the request names a model with its own format."""
        return bool(self._used(params))

    def prepare(self, params: CorrectionParams, body: Mapping[str, Any]) -> _Request | None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not self._used(params):
            return None  # /v1/completions, or no model with its own format
        return _Request(
            tuple(m for m in messages if isinstance(m, Mapping)),
            body.get("add_generation_prompt") is not False,
            body.get("continue_final_message") is True,
        )

    async def admit(self, params: CorrectionParams, prepared: _Request | None) -> Admitted:
        if prepared is None:
            return Admitted(params, ())
        prompts = await asyncio.to_thread(self._render, params, prepared)
        return Admitted(params.model_copy(update={"prompts": prompts}), tuple(sorted(prompts)))

    def report(self, admitted: Admitted, figures: Mapping[str, float] | None) -> dict | None:
        if not admitted.state:
            return None
        return {"prompts": {name: self._label(name) for name in admitted.state}}

    async def for_messages(
        self, params: CorrectionParams, messages: Sequence[Mapping[str, Any]]
    ) -> CorrectionParams:
        """``params`` with the prompts of another conversation on the same request (a
        refinement round's)."""
        if not self._used(params):
            return params
        request = _Request(tuple(messages), True, False)
        prompts = await asyncio.to_thread(self._render, params, request)
        return params.model_copy(update={"prompts": prompts})

    def _used(self, params: CorrectionParams) -> list[str]:
        coefficients = getattr(params, "coefficients", {})
        return [name for name in coefficients if name in self.formats]

    def _label(self, name: str) -> str:
        setting = self.formats[name].setting
        return setting if setting in NAMED_FORMATS else "file"

    def _render(self, params: CorrectionParams, request: _Request) -> dict[str, list[int]]:
        out = {}
        for name in self._used(params):
            try:
                out[name] = self.formats[name].render(
                    request.messages,
                    add_generation_prompt=request.add_generation_prompt,
                    continue_final_message=request.continue_final_message,
                )
            except Exception as exc:  # a template refusing these messages
                raise RequestRefused(
                    f"the auxiliary model '{name}' cannot render these messages in its chat "
                    f"format: {str(exc)[:300]}",
                    param="messages",
                ) from None
            if not out[name]:
                raise RequestRefused(
                    f"the auxiliary model '{name}''s prompt for these messages is empty",
                    param="messages",
                )
        return out
