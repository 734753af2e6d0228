"""Small models for the proxy-tuning evaluation (``corrigo eval proxy-tuning``; Liu et al.
2024, "Tuning Language Models by Proxy"), trained with transformers on the CPU.

- **Anti-expert** (:func:`cut_layers` + :func:`distillation_loss`): the first ``n`` decoder
  layers of the base model, its final norm and its tied embeddings/head, so it shares the
  base's tokenizer by construction. Cut, it computes ``head(norm(h_n))`` where ``h_n`` is the
  base's hidden state after layer ``n``; it is then briefly re-trained to imitate the base by
  minimising ``KL(p_base || p_anti)`` at every position of chat-formatted sequences.
- **Expert** and **directly tuned base** (:func:`sft_example` + :func:`pad_batch`): supervised
  fine-tuning with the cross-entropy on response tokens only (prompt and padding positions
  carry the label ``-100``, which the loss ignores).

:func:`fit` is the shared training loop (AdamW, linear decay, a tqdm bar); :func:`greedy`
decodes chat prompts greedily in batches, as the server renders them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .copilot_training import encode, render_prompt

#: The label the cross-entropy ignores (transformers' and torch's convention).
IGNORE = -100


def cut_layers(model, layers: int):
    """A copy of a Llama-style causal LM that keeps only its first ``layers`` decoder layers
    (plus embeddings, final norm and head); the weights are copied, not shared."""
    total = model.config.num_hidden_layers
    if not 0 < layers <= total:
        raise ValueError(f"layers must be in 1..{total}, got {layers}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    student = type(model)(config)
    kept = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers
    }
    student.load_state_dict(kept)
    return student.to(next(model.parameters()).dtype)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 of
    ``KL(p_t || p_s) = sum_v p_t(v) (log p_t(v) - log p_s(v))``; logits are ``[B, T, V]``."""
    log_t = teacher_logits.float().log_softmax(-1)
    log_s = student_logits.float().log_softmax(-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def sft_example(tokenizer, prompt: str, response: str, max_length: int = 512):
    """``(input_ids, labels)`` for one pair: the chat-rendered prompt, the response and end of
    turn; labels are the ids on response tokens and :data:`IGNORE` on the prompt."""
    stream, prompt_length = encode(tokenizer, prompt, response, max_length)
    return stream, [IGNORE] * prompt_length + stream[prompt_length:]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, labels: Sequence[Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (and ``labels`` padded with
    :data:`IGNORE`, when given)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        lab = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
        for i, s in enumerate(labels):
            lab[i, : len(s)] = torch.tensor(s)
        batch["labels"] = lab
    return batch


def fit(
    model,
    examples: Sequence,
    loss: Callable[[Sequence], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` with AdamW (learning rate decaying linearly to 0) on shuffled batches
    of ``examples``; ``loss(batch)`` returns the scalar to minimise. Returns the losses."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    order = list(range(len(examples)))
    steps = epochs * -(-len(order) // batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    model.train()
    losses: list[float] = []
    with tqdm(total=steps, desc=desc) as bar:
        for _ in range(epochs):
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                value = loss([examples[i] for i in order[start : start + batch_size]])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                losses.append(float(value))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update()
    model.eval()
    return losses


@torch.inference_mode()
def greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    batch_size: int = 16,
    desc: str = "generate",
) -> list[list[int]]:
    """Greedy continuations (token ids, up to and including end of turn) of one-message chats,
    rendered as the server renders them; left-padded batches."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    out: list[list[int]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc):
        rendered = [render_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(r) for r in rendered)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rendered])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rendered])
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )[:, width:]
        for row in generated.tolist():
            end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else None
            out.append(row[:end])
    return out
