"""The proxy-tuning eval's model builders on tiny random models: the layer cut, the
distillation loss and the response-only fine-tuning labels."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from adapters.default_model import ensure_default_model
from adapters.proxy_training import (
    IGNORE,
    cut_layers,
    distillation_loss,
    pad_batch,
    sft_example,
)

from ..support import tiny_llama_config


def tiny(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(97, num_hidden_layers=layers)).eval()


def test_cut_keeps_the_first_layers_and_equals_the_truncated_forward():
    model = tiny(4)
    cut = cut_layers(model, 2)
    assert cut.config.num_hidden_layers == 2 and len(cut.model.layers) == 2
    assert model.config.num_hidden_layers == 4  # the source is untouched
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[2]  # after layer 2
        expected = model.lm_head(model.model.norm(hidden))
        torch.testing.assert_close(cut(ids).logits, expected)
        assert not torch.allclose(model(ids).logits, expected)  # the cut changes the model


def test_cut_copies_weights_and_keeps_the_head_tied():
    model = tiny(3)
    cut = cut_layers(model, 1)
    assert cut.lm_head.weight.data_ptr() == cut.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        cut.model.embed_tokens.weight.add_(1.0)
    assert not torch.equal(cut.model.embed_tokens.weight, model.model.embed_tokens.weight)


@pytest.mark.parametrize("layers", [0, 5])
def test_cut_refuses_a_layer_count_out_of_range(layers):
    with pytest.raises(ValueError, match="1..4"):
        cut_layers(tiny(4), layers)


def test_distillation_loss_is_the_masked_mean_kl():
    student, teacher = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    p = teacher.softmax(-1)
    kl = (p * (p.log() - student.log_softmax(-1))).sum(-1)
    expected = (kl[0, 0] + kl[0, 1] + kl[1, 0]) / 3
    torch.testing.assert_close(distillation_loss(student, teacher, mask), expected)
    assert float(distillation_loss(teacher, teacher, mask)) == pytest.approx(0, abs=1e-6)


def test_sft_labels_cover_the_response_and_end_of_turn_only():
    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model())
    ids, labels = sft_example(tokenizer, "Is it good?", "Positive")
    response = tokenizer("Positive", add_special_tokens=False)["input_ids"]
    prompt = len(ids) - len(response) - 1
    assert labels[:prompt] == [IGNORE] * prompt
    assert labels[prompt:] == ids[prompt:] == response + [tokenizer.eos_token_id]
    batch = pad_batch([ids, ids[:5]], pad_id=0, labels=[labels, labels[:5]])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(ids))
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * (len(ids) - 5)
    assert batch["labels"][1].tolist() == [IGNORE] * len(ids)  # padding and prompt ignored
