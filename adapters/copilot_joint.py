"""``corrigo copilot train --joint``: fine-tune the pilot and train its copilot on the mistakes
of the pilot *as it is being fine-tuned* (Zou et al. 2025, "Transformer Copilot", the joint
training of Alg. 1), then save both, the copilot bound to the fine-tuned pilot.

1. **Pilot fine-tuning, logged.** For rounds ``r = 0 .. E-1`` (one round = one epoch over the
   data, batches in a seeded order), each batch is read by the pilot with its round-``r``
   weights ``theta_t`` (teacher forcing, prompts rendered as the server renders them,
   adapters/copilot_training.py), its loss is the mean cross-entropy of the response tokens
   ``-1/N sum_i log p_theta_t(y_i | y_<i)``, and before the AdamW step the same forward's
   top-``k`` distributions over the response tokens are appended to round ``r``'s Mistake
   Log. So the log holds ``p_theta_t`` for every weight state the pilot passes through.
2. **The fine-tuned pilot** is saved in its original dtype (``OUT/pilot/``, a model folder the
   server serves as it is) and logged once more, under the weights as saved (round ``E``:
   the pilot the copilot will actually serve beside).
3. **The copilot** is trained on the aggregated log (rounds ``0 .. E``; RMSE against
   ``onehot(y) - p^(k)``, as the frozen trainer) and saved in ``OUT`` bound to ``OUT/pilot``
   (vocabulary, config and weights fingerprint, decoding/copilot/binding.py): it is refused
   beside the original pilot. ``OUT/serve.toml`` is the config block that serves them together.

Resumption: each completed round writes its log, then the pilot's weights and optimiser state
(``pilot_state.pt``); a rerun continues after the last completed round, and the copilot's
training resumes from its own optimiser state as in the frozen trainer. Both phases show tqdm
progress bars; ``--device auto`` uses CUDA where torch sees a GPU, else the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .aux_models import resolve_path
from .copilot_training import (
    LOG_DIR,
    MistakeLog,
    TrainingError,
    TrainSettings,
    batches,
    bind,
    build_mistake_log,
    encode,
    fit_copilot,
    log_logits,
    pad_batch,
    read_pairs,
    resolve_device,
    start_run,
)

#: The fine-tuned pilot's folder inside ``OUT``.
PILOT_DIR = "pilot"
#: The pilot's fine-tuning state after the last completed round.
PILOT_STATE = "pilot_state.pt"
#: The config block serving the fine-tuned pilot with its copilot.
SERVE_CONFIG = "serve.toml"
#: The round logged under the saved fine-tuned weights.
FINAL_ROUND = "final"


@dataclass(frozen=True)
class JointSettings:
    """The pilot's fine-tuning: ``epochs`` rounds of AdamW at ``lr`` over batches of
    ``batch_size`` examples (the copilot's own settings are a :class:`TrainSettings`)."""

    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 8
    weight_decay: float = 0.0


def response_loss(logits: torch.Tensor, examples: Sequence[tuple[list[int], int]]) -> torch.Tensor:
    """Mean cross-entropy of every response token (``y_i`` at stream position ``i`` is
    predicted at ``i - 1``), prompts and padding excluded."""
    scores, targets = [], []
    for b, (stream, prompt_length) in enumerate(examples):
        scores.append(logits[b, prompt_length - 1 : len(stream) - 1])
        targets.append(torch.tensor(stream[prompt_length:], device=logits.device))
    return torch.nn.functional.cross_entropy(torch.cat(scores).float(), torch.cat(targets))


def round_path(out: Path, r: int) -> Path:
    return out / LOG_DIR / f"round-{r:03d}.npz"


def saved_dtype(pilot_path: str) -> torch.dtype:
    """The dtype the pilot's config declares (its weights' dtype), float32 if none."""
    config = json.loads((Path(pilot_path) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def fine_tune_rounds(
    pilot_path: str,
    examples: Sequence[tuple[list[int], int]],
    out: Path,
    settings: TrainSettings,
    joint: JointSettings,
) -> None:
    """Phase 1 and 2: the logged rounds, then ``OUT/pilot`` (skipped when it exists)."""
    from transformers import AutoModelForCausalLM

    if (out / PILOT_DIR).is_dir():
        return
    device = settings.device
    pilot = AutoModelForCausalLM.from_pretrained(pilot_path, dtype=torch.float32).to(device)
    optimizer = torch.optim.AdamW(pilot.parameters(), lr=joint.lr, weight_decay=joint.weight_decay)
    done = 0
    if (out / PILOT_STATE).exists():
        state = torch.load(out / PILOT_STATE, map_location=device)
        pilot.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        done = state["rounds"]
    per_round = math.ceil(len(examples) / joint.batch_size)
    bar = tqdm(total=joint.epochs * per_round, initial=done * per_round, desc="pilot", unit="step")
    pilot.train()
    for r in range(done, joint.epochs):
        bar.set_description(f"pilot round {r + 1}/{joint.epochs}")
        parts = []
        for batch in batches(len(examples), joint.batch_size, settings.seed, r):
            chunk = [examples[i] for i in batch]
            ids, mask = pad_batch(chunk)
            logits = pilot(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            parts.append(log_logits(logits, chunk, settings.top_k))  # theta_t, before its step
            loss = response_loss(logits, chunk)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3g}")
        round_path(out, r).parent.mkdir(parents=True, exist_ok=True)
        MistakeLog.concat(parts).save(round_path(out, r))
        _save_pilot_state(out, pilot, optimizer, r + 1)
    bar.close()
    pilot.eval()
    tmp = out / (PILOT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pilot.to(saved_dtype(pilot_path)).save_pretrained(tmp)
    _copy_tokenizer(pilot_path, tmp)
    tmp.rename(out / PILOT_DIR)
    (out / PILOT_STATE).unlink(missing_ok=True)  # the folder and the round logs replace it


def _copy_tokenizer(pilot_path: str, folder: Path) -> None:
    """The tokenizer files and chat template, byte for byte (the binding hashes the vocabulary
    the server loads from them)."""
    for path in Path(pilot_path).iterdir():
        if path.is_file() and (
            path.name.startswith("tokenizer")
            or path.name in {"chat_template.jinja", "special_tokens_map.json", "vocab.json"}
            or path.name in {"merges.txt", "generation_config.json"}
        ):
            shutil.copyfile(path, folder / path.name)


def _save_pilot_state(out: Path, pilot, optimizer, rounds: int) -> None:
    tmp = out / (PILOT_STATE + ".tmp")
    torch.save(
        {"model": pilot.state_dict(), "optimizer": optimizer.state_dict(), "rounds": rounds}, tmp
    )
    tmp.rename(out / PILOT_STATE)


def serve_block(out: Path, name: str) -> str:
    """The TOML that serves the fine-tuned pilot with its copilot (README: Copilot)."""
    folder = out.resolve()
    return (
        f"# corrigo serve --config {folder / SERVE_CONFIG}\n"
        "[model]\n"
        f"path = {json.dumps(str(folder / PILOT_DIR))}   # the fine-tuned pilot is served\n\n"
        f"[copilots.{name}]\n"
        f"path = {json.dumps(str(folder))}\n"
    )


def train_joint(
    pilot: str, data: Path, out: Path, settings: TrainSettings, joint: JointSettings
) -> Iterator[tuple[int, float]]:
    """Fine-tune the pilot with its logged rounds, save it, train the copilot on every round's
    log and save it bound to the fine-tuned pilot; yields the copilot's ``(step, loss)``.
    Resumes from whatever ``out`` already holds for the same pilot, data and settings."""
    from transformers import AutoConfig, AutoTokenizer

    if joint.epochs < 1:
        raise TrainingError("--pilot-epochs must be at least 1")
    settings = replace(settings, device=resolve_device(settings.device))
    pilot_path = resolve_path(pilot)
    tokenizer = AutoTokenizer.from_pretrained(pilot_path)
    pairs = read_pairs(data)
    start_run(
        out,
        {
            "pilot": pilot,
            "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "top_k": settings.top_k,
            "max_length": settings.max_length,
            "seed": settings.seed,
            "joint": asdict(joint),
        },
    )
    examples = [encode(tokenizer, p, r, settings.max_length) for p, r in pairs]
    fine_tune_rounds(pilot_path, examples, out, settings, joint)
    tuned = str((out / PILOT_DIR).resolve())
    final = build_mistake_log(tuned, examples, out / LOG_DIR / FINAL_ROUND, settings)
    log = MistakeLog.concat(
        [MistakeLog.load(round_path(out, r)) for r in range(joint.epochs)] + [final]
    )
    (out / SERVE_CONFIG).write_text(serve_block(out, out.resolve().name))
    pilot_config = AutoConfig.from_pretrained(tuned)
    yield from fit_copilot(log, pilot_config, bind(tuned, tuned, settings), out, settings)
