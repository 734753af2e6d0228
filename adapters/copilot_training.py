"""``corrigo copilot train``: the mistake log of a pilot over a dataset, and the copilot
trained on it (Zou et al. 2025, "Transformer Copilot").

1. **Mistake log.** The pilot (transformers) reads each ``{"prompt", "response"}`` pair with
   teacher forcing: the prompt rendered by the pilot's chat template exactly as the server
   renders a chat request (one user message, generation prompt added), then the response's
   tokens and the end-of-turn token. For every response token ``y_i`` it records the pilot's
   distribution ``p_i`` over it; the error the copilot learns is ``l_i = onehot(y_i) - p_i``.
   Stored compactly: the token stream (int32), and per response token the top-``k`` ids
   (int32) and probabilities (float16) of ``p_i``. That is enough because (a) the copilot
   reads exactly those top-``k`` pairs, in training and in serving, and (b) ``l_i`` is
   rebuilt as ``onehot(y_i) - p_i^(k)`` (``p`` truncated to its top ``k``), whose squared
   distance to the true ``l_i`` is ``sum_{v outside top k} p_iv^2 <= p_ik * (1 - sum_topk p_i)``:
   at most the k-th probability times the tail mass, which the log also reports
   (``tail_bound``). ``y_i`` is the next token of the stream. The log is written in parts,
   so an interrupted run resumes at the first missing part.
2. **Copilot.** :class:`decoding.copilot.model.Copilot` reads the token stream with the
   logged top-``k`` pilot distributions at response positions (and tokens alone at prompt
   positions, as at serving time) and minimises the RMSE between its output and ``l``
   (over every vocabulary entry of every response token). Checkpoints of the optimiser state
   every ``--save-every`` steps make training resumable; the final folder is a copilot
   checkpoint (decoding/copilot/checkpoint.py) with its binding to the pilot.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from decoding.copilot import checkpoint
from decoding.copilot.binding import Binding
from decoding.copilot.model import Copilot
from decoding.copilot.runner import pilot_identity

from .aux_models import resolve_path

LOG_DIR = "mistake_log"
STATE = "train_state.pt"
TRAIN_LOG = "train_log.jsonl"
#: Examples per mistake-log part (the unit of resumption).
PART_SIZE = 256


class TrainingError(ValueError):
    """Bad input to the trainer; the message names the file and line or the flag."""


@dataclass(frozen=True)
class TrainSettings:
    top_k: int = 32
    hidden_size: int = 128
    layers: int = 2
    heads: int = 2
    lr: float = 1e-3
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 512
    save_every: int = 200
    seed: int = 0
    space: str = "probs"
    default_lambda: float = 1.0
    #: A torch device, or ``"auto"`` (:func:`resolve_device`).
    device: str = "cpu"


def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if not (
                isinstance(item, dict)
                and isinstance(item.get("prompt"), str)
                and isinstance(item.get("response"), str)
            ):
                raise TrainingError(f'{path}:{number}: expected {{"prompt": str, "response": str}}')
            pairs.append((item["prompt"], item["response"]))
    if not pairs:
        raise TrainingError(f"{path}: no prompt/response pairs")
    return pairs


def render_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids as the server's chat endpoint renders them."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def encode(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """``(stream, prompt length)``: the rendered prompt, then the response and end of turn."""
    prompt_ids = render_prompt(tokenizer, prompt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    stream = (prompt_ids + response_ids + [tokenizer.eos_token_id])[:max_length]
    return stream, len(prompt_ids)


# -- 1. the mistake log --------------------------------------------------------------------------


@dataclass
class MistakeLog:
    """Concatenated examples: ``tokens[offsets[e]:offsets[e+1]]`` is example ``e``'s stream
    (``prompt_lengths[e]`` of them its prompt); its response tokens' logged distributions are
    rows ``rows[e]:rows[e+1]`` of ``top_ids``/``top_probs``, in stream order."""

    tokens: np.ndarray
    offsets: np.ndarray
    prompt_lengths: np.ndarray
    rows: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @classmethod
    def concat(cls, parts: Sequence[MistakeLog]) -> MistakeLog:
        tokens = np.concatenate([p.tokens for p in parts])
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        counts = np.concatenate([np.diff(p.rows) for p in parts])
        return cls(
            tokens,
            np.concatenate([[0], np.cumsum(lengths)]),
            np.concatenate([p.prompt_lengths for p in parts]),
            np.concatenate([[0], np.cumsum(counts)]),
            np.concatenate([p.top_ids for p in parts]),
            np.concatenate([p.top_probs for p in parts]),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **self.__dict__)
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> MistakeLog:
        with np.load(path) as data:
            return cls(**{k: data[k] for k in data.files})


def pad_batch(examples: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the streams, right-padded with 0."""
    width = max(len(s) for s, _ in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for b, (stream, _) in enumerate(examples):
        ids[b, : len(stream)] = torch.tensor(stream)
        mask[b, : len(stream)] = 1
    return ids, mask


@torch.no_grad()
def log_logits(
    logits: torch.Tensor, examples: Sequence[tuple[list[int], int]], top_k: int
) -> MistakeLog:
    """The mistake log of one batch from the pilot's ``logits`` over it (``[batch, width,
    vocab]``, as :func:`pad_batch` lays the examples out)."""
    top_ids, top_probs, counts = [], [], []
    for b, (stream, prompt_length) in enumerate(examples):
        # Position i predicts token i + 1: response tokens are predicted at P - 1 .. n - 2.
        scores = logits[b, prompt_length - 1 : len(stream) - 1].detach().float()
        probs, index = torch.softmax(scores, -1).topk(top_k, -1)
        top_ids.append(index.to(torch.int32).cpu().numpy())
        top_probs.append(probs.to(torch.float16).cpu().numpy())
        counts.append(len(stream) - prompt_length)
    lengths = [len(s) for s, _ in examples]
    return MistakeLog(
        np.concatenate([np.asarray(s, dtype=np.int32) for s, _ in examples]),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.asarray([p for _, p in examples], dtype=np.int64),
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        np.concatenate(top_ids),
        np.concatenate(top_probs),
    )


@torch.inference_mode()
def log_part(pilot, examples: Sequence[tuple[list[int], int]], top_k: int, device) -> MistakeLog:
    """The pilot's top-``k`` distributions over each example's response tokens."""
    ids, mask = pad_batch(examples)
    logits = pilot(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return log_logits(logits, examples, top_k)


def resolve_device(name: str) -> str:
    """``"auto"``: CUDA where torch sees a GPU, else the CPU; any other name as given, after
    checking that torch can use it (a clear error instead of a failure mid-run)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError) as exc:
        raise TrainingError(f"--device {name}: torch cannot use it here ({exc})") from None
    return name


def build_mistake_log(
    pilot_path: str, examples: Sequence[tuple[list[int], int]], folder: Path, settings
) -> MistakeLog:
    """Log every example (resuming from the parts already in ``folder``)."""
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    n_parts = math.ceil(len(examples) / PART_SIZE)
    missing = [i for i in range(n_parts) if not (folder / f"part-{i:05d}.npz").exists()]
    if missing:
        pilot = AutoModelForCausalLM.from_pretrained(pilot_path, dtype=torch.float32)
        pilot = pilot.to(settings.device).eval()
        bar = tqdm(total=len(examples), desc="mistake log", unit="ex")
        bar.update(len(examples) - sum(len(_part(examples, i)) for i in missing))
        for i in missing:
            chunk = _part(examples, i)
            parts = []
            for start in range(0, len(chunk), settings.batch_size):
                batch = chunk[start : start + settings.batch_size]
                parts.append(log_part(pilot, batch, settings.top_k, settings.device))
                bar.update(len(batch))
            MistakeLog.concat(parts).save(folder / f"part-{i:05d}.npz")
        bar.close()
    return MistakeLog.concat(
        [MistakeLog.load(folder / f"part-{i:05d}.npz") for i in range(n_parts)]
    )


def _part(examples, i):
    return examples[i * PART_SIZE : (i + 1) * PART_SIZE]


def tail_bound(log: MistakeLog) -> float:
    """Mean over logged tokens of ``p_k * (1 - sum_topk p)``: the bound on the squared error
    that truncating ``p`` to its top ``k`` adds to each target ``l``."""
    probs = log.top_probs.astype(np.float32)
    return float((probs[:, -1] * (1 - probs.sum(-1)).clip(0)).mean())


# -- 2. the copilot ------------------------------------------------------------------------------


def copilot_config(pilot_config, settings: TrainSettings):
    from transformers import LlamaConfig

    head_dim = max(settings.hidden_size // settings.heads, 32)
    return LlamaConfig(
        vocab_size=pilot_config.vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=2 * settings.hidden_size,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=1,
        head_dim=head_dim,
        max_position_embeddings=getattr(pilot_config, "max_position_embeddings", 8192),
        tie_word_embeddings=False,
    )


def batch_tensors(log: MistakeLog, examples: Sequence[int], device) -> dict[str, torch.Tensor]:
    """Inputs (stream without its last token, with the logged pilot top-k at response
    positions), the positions scored, and their targets' sparse parts."""
    k = log.top_ids.shape[1]
    width = max(int(log.offsets[e + 1] - log.offsets[e]) - 1 for e in examples)
    b = len(examples)
    ids = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    pilot_ids = torch.zeros(b, width, k, dtype=torch.long)
    pilot_probs = torch.zeros(b, width, k)
    select = torch.zeros(b, width, dtype=torch.bool)
    targets = []
    for row, e in enumerate(examples):
        stream = torch.from_numpy(log.tokens[log.offsets[e] : log.offsets[e + 1]].astype(np.int64))
        n, p = len(stream), int(log.prompt_lengths[e])
        ids[row, : n - 1] = stream[:-1]
        mask[row, : n - 1] = 1
        logged = slice(log.rows[e], log.rows[e + 1])
        pilot_ids[row, p - 1 : n - 1] = torch.from_numpy(log.top_ids[logged].astype(np.int64))
        pilot_probs[row, p - 1 : n - 1] = torch.from_numpy(log.top_probs[logged].astype(np.float32))
        select[row, p - 1 : n - 1] = True
        targets.append(stream[p:])
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "pilot_ids": pilot_ids.to(device),
        "pilot_probs": pilot_probs.to(device),
        "select": select.to(device),
        "targets": torch.cat(targets).to(device),
    }


def rmse_loss(model: Copilot, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sqrt(mean((f - l)^2))`` over every vocabulary entry of every response token, with
    ``l = onehot(y) - p^(k)``."""
    out = model(
        batch["input_ids"],
        batch["pilot_ids"],
        batch["pilot_probs"],
        select=batch["select"],
        attention_mask=batch["attention_mask"],
    ).logits
    sel = batch["select"]
    error = torch.zeros_like(out)
    error.scatter_(1, batch["pilot_ids"][sel], -batch["pilot_probs"][sel])
    error[torch.arange(len(out), device=out.device), batch["targets"]] += 1
    return torch.sqrt(torch.mean((out - error) ** 2))


def batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def start_run(out: Path, run: dict) -> None:
    """Record what ``out`` is trained from; refuse a folder that holds another run."""
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    if run_file.exists() and json.loads(run_file.read_text()) != run:
        raise TrainingError(
            f"{out} holds a run for another pilot, data set or settings; use a new --out folder"
        )
    run_file.write_text(json.dumps(run, indent=2))


def bind(pilot: str, pilot_path: str, settings: TrainSettings) -> Binding:
    """The binding to the pilot at ``pilot_path`` (vocabulary, config, weights)."""
    vocab, config_dict, weights = pilot_identity(pilot_path)
    return Binding.of(
        pilot,
        vocab,
        config_dict,
        space=settings.space,
        default_lambda=settings.default_lambda,
        weights=weights,
    )


def train(
    pilot: str, data: Path, out: Path, settings: TrainSettings
) -> Iterator[tuple[int, float]]:
    """Build the mistake log, train, save the checkpoint; yields ``(step, loss)`` as it goes.
    Resumes from whatever ``out`` already holds for the same pilot, data and settings."""
    from transformers import AutoConfig, AutoTokenizer

    settings = replace(settings, device=resolve_device(settings.device))
    pilot_path = resolve_path(pilot)
    tokenizer = AutoTokenizer.from_pretrained(pilot_path)
    pilot_config = AutoConfig.from_pretrained(pilot_path)
    pairs = read_pairs(data)
    start_run(
        out,
        {
            "pilot": pilot,
            "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "top_k": settings.top_k,
            "max_length": settings.max_length,
        },
    )
    examples = [encode(tokenizer, p, r, settings.max_length) for p, r in pairs]
    log = build_mistake_log(pilot_path, examples, out / LOG_DIR, settings)
    yield from fit_copilot(log, pilot_config, bind(pilot, pilot_path, settings), out, settings)


def fit_copilot(
    log: MistakeLog, pilot_config, binding: Binding, out: Path, settings: TrainSettings
) -> Iterator[tuple[int, float]]:
    """Train a copilot on ``log`` (resuming from ``out``'s optimiser state) and save its
    checkpoint, bound by ``binding``, in ``out``; yields ``(step, loss)``."""
    torch.manual_seed(settings.seed)
    model = Copilot(copilot_config(pilot_config, settings), settings.top_k).to(settings.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    step = 0
    if (out / STATE).exists():
        state = torch.load(out / STATE, map_location=settings.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    per_epoch = math.ceil(len(log) / settings.batch_size)
    total = settings.epochs * per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    model.train()
    bar = tqdm(total=total, initial=step, desc="copilot", unit="step")
    with (out / TRAIN_LOG).open("a") as train_log:
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            examples_ = batches(len(log), settings.batch_size, settings.seed, epoch)[offset]
            loss = rmse_loss(model, batch_tensors(log, examples_, settings.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            train_log.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
            bar.update(1)
            bar.set_postfix(rmse=f"{loss.item():.3g}")
            yield step, loss.item()
            if step % settings.save_every == 0 or step == total:
                _save_state(out, model, optimizer, step)
    bar.close()
    model.eval()
    checkpoint.save(out, model, binding)


def _save_state(out: Path, model, optimizer, step: int) -> None:
    tmp = out / (STATE + ".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp
    )
    tmp.rename(out / STATE)
