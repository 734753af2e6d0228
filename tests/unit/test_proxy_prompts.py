"""Per-model prompts for proxy-tuning (decoding/proxy_tuning/prompts.py): each auxiliary model
with its own chat format steps on its own rendering of the request, then the row's generated
tokens; the rendering is the one its template (or none) gives; clients cannot set it."""

import asyncio
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from adapters.default_model import ensure_default_model
from decoding.correction import decode_wire, parse_correction
from decoding.params import SERVER_SET_CONTEXT, CorrectionError, RequestRefused
from decoding.pipeline import Row, TokenStream
from decoding.proxy_tuning import AUX_MODELS_CONTEXT, ProxyTuning
from decoding.proxy_tuning.prompts import PromptFormatError, ProxyPrompts, load_format
from decoding.spec import CorrectionSpec

CONTEXT = {AUX_MODELS_CONTEXT: {"expert", "anti"}}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]},
]
PLAIN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
#: A template unlike SmolLM2's own.
TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def model_path():
    return str(ensure_default_model())


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return AutoTokenizer.from_pretrained(model_path)


def test_each_format_renders_as_its_template_says(model_path, tokenizer, tmp_path):
    chat = load_format("expert", "chat", model_path)
    expected = tokenizer.apply_chat_template(PLAIN, tokenize=False, add_generation_prompt=True)
    assert chat.render(MESSAGES) == tokenizer(expected, add_special_tokens=False).input_ids
    assert tokenizer.decode(chat.render(MESSAGES)).endswith("<|im_start|>assistant\n")

    base = load_format("expert", "base", model_path)
    assert base.render(MESSAGES) == tokenizer("Be brief.\n\nWhat is 2 + 3?\n\n").input_ids
    continued = [*PLAIN, {"role": "assistant", "content": "It is"}]
    assert base.render(continued, continue_final_message=True) == (
        tokenizer("Be brief.\n\nWhat is 2 + 3?\n\nIt is").input_ids
    )

    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    own = load_format("expert", str(path), model_path)
    text = "### system: Be brief.\n### user: What is 2 + 3?\n### assistant:"
    assert own.render(MESSAGES) == tokenizer(text, add_special_tokens=False).input_ids
    no_prompt = "### system: Be brief.\n### user: What is 2 + 3?\n"
    assert own.render(MESSAGES, add_generation_prompt=False) == (
        tokenizer(no_prompt, add_special_tokens=False).input_ids
    )


def test_unusable_formats_are_start_up_errors_naming_the_key(model_path, tmp_path):
    with pytest.raises(PromptFormatError, match=r"aux_models\.expert\.chat_template: cannot read"):
        load_format("expert", str(tmp_path / "missing.jinja"), model_path)
    empty = tmp_path / "empty.jinja"
    empty.write_text("  ")
    with pytest.raises(PromptFormatError, match="must hold a Jinja chat template"):
        load_format("expert", str(empty), model_path)
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(PromptFormatError, match="does not render"):
        load_format("expert", str(broken), model_path)
    bare = tmp_path / "bare-tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(bare)
    with pytest.raises(PromptFormatError, match="'chat' needs a chat template"):
        load_format("expert", "chat", str(bare))


def proxy(**extra):
    return parse_correction(
        {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", **extra}}, context=CONTEXT
    ).steps["proxy_tuning"]


def test_admission_renders_only_the_models_with_their_own_format(model_path, tokenizer):
    step = ProxyPrompts({"expert": load_format("expert", "base", model_path)})
    params = proxy()
    prepared = step.prepare(params, {"messages": MESSAGES})
    admitted = asyncio.run(step.admit(params, prepared))
    expected = tokenizer("Be brief.\n\nWhat is 2 + 3?\n\n").input_ids
    assert admitted.params.prompts == {"expert": expected}
    assert step.report(admitted, None) == {"prompts": {"expert": "base"}}
    # The wire carries them; the engine side (and only it) admits them.
    wire = CorrectionSpec({"proxy_tuning": admitted.params}).to_wire()
    engine = decode_wire(wire, context={**CONTEXT, SERVER_SET_CONTEXT: True})
    assert engine.steps["proxy_tuning"].prompts == {"expert": expected}
    with pytest.raises(CorrectionError) as err:
        decode_wire(wire, context=CONTEXT)
    assert err.value.param == "correction.proxy_tuning.prompts"
    # /v1/completions (a raw prompt) and requests using no such model: nothing rendered.
    for body, used in (({"prompt": "2 + 3 ="}, params), ({"messages": MESSAGES}, None)):
        if used is None:
            used = parse_correction(
                {"proxy_tuning": {"expert": "anti", "anti_expert": "anti"}}, context=CONTEXT
            ).steps["proxy_tuning"]
        admitted = asyncio.run(step.admit(used, step.prepare(used, body)))
        assert admitted.params.prompts is None and step.report(admitted, None) is None
    # A refinement round renders its own conversation.
    again = asyncio.run(step.for_messages(params, [{"role": "user", "content": "Hi"}]))
    assert again.prompts == {"expert": tokenizer("Hi\n\n").input_ids}


def test_a_template_refusing_the_messages_is_a_400_on_messages(model_path, tmp_path):
    path = tmp_path / "strict.jinja"
    path.write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system messages') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    step = ProxyPrompts({"expert": load_format("expert", str(path), model_path)})
    params = proxy()
    with pytest.raises(RequestRefused) as err:
        asyncio.run(step.admit(params, step.prepare(params, {"messages": MESSAGES})))
    assert err.value.param == "messages" and "no system messages" in err.value.message


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"expert": [1, 2]}, None),
        ({"expert": [-1]}, "greater than or equal to 0"),
        ({"nope": [1]}, "unknown auxiliary model"),
        ({"expert": []}, "is empty"),
    ],
)
def test_prompts_are_refused_from_clients_and_checked_on_the_wire(prompts, message):
    body = {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "prompts": prompts}}
    with pytest.raises(CorrectionError) as err:
        parse_correction(body, context=CONTEXT)
    assert err.value.param.startswith("correction.proxy_tuning.prompts")
    server = {**CONTEXT, SERVER_SET_CONTEXT: True}
    if message is None:
        assert parse_correction(body, context=server).steps["proxy_tuning"].prompts == prompts
    else:
        with pytest.raises(CorrectionError, match=message):
            parse_correction(body, context=server)


class RecordingSource:
    """Logits ``table[len(stream)]``; records every stream it is stepped on."""

    def __init__(self, seed, vocab=10):
        self.table = torch.randn(64, vocab, generator=torch.Generator().manual_seed(seed))
        self.vocab_size = vocab
        self.seen = []

    def step(self, streams):
        self.seen.append({uid: s.tokens() for uid, s in streams.items()})
        return torch.stack([self.table[len(s)] for s in streams.values()])

    def release(self, uid):
        pass


def test_each_aux_model_steps_on_its_own_prompt_then_the_rows_generated_tokens():
    expert, anti = RecordingSource(1), RecordingSource(2)
    plugin = ProxyTuning({"expert": expert, "anti": anti})
    own = [9, 8, 7, 6, 5]
    params = proxy().model_copy(update={"prompts": {"expert": own}})
    output, other = [3], [5]
    rows = [
        Row(0, CorrectionSpec({"proxy_tuning": params}), TokenStream([1, 2], output)),
        Row(1, CorrectionSpec({"proxy_tuning": proxy()}), TokenStream([1, 2, 4], other)),
    ]
    for step in range(2):
        plugin.prepare(rows)
        logits = plugin.apply(torch.zeros(2, 10), rows)
        # Row 0: the expert saw its own prompt + the generated tokens, the anti-expert the
        # engine's; row 1 (no own prompt) the engine's for both.
        assert expert.seen[-1] == {0: [*own, *output], 1: [1, 2, 4, *other]}
        assert anti.seen[-1] == {0: [1, 2, *output], 1: [1, 2, 4, *other]}
        expected0 = expert.table[len(own) + len(output)] - anti.table[2 + len(output)]
        assert torch.allclose(logits[0], expected0)
        output.append(10 + step)
        other.append(20 + step)
    assert len(expert.seen) == 2  # the forwards started ahead were the ones used


def test_the_step_applies_only_to_requests_naming_a_model_with_its_own_format(model_path):
    step = ProxyPrompts({"chatty": load_format("chatty", "chat", model_path)})
    assert step.applies(SimpleNamespace(coefficients={"chatty": 1.0, "plain": -1.0}))
    assert not step.applies(SimpleNamespace(coefficients={"plain": 1.0, "other": -1.0}))
