"""Joint copilot training (``corrigo copilot train --joint``) on a tiny random pilot: the
rounds are logged under the pilot's weights of the moment, the copilot is bound to the
fine-tuned pilot and refused beside the original, a killed run resumes to the same result, and
the config block it writes serves both."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import adapters.copilot_joint as joint_module
from adapters.copilot_joint import (
    FINAL_ROUND,
    PILOT_DIR,
    PILOT_STATE,
    SERVE_CONFIG,
    JointSettings,
    response_loss,
    round_path,
    train_joint,
)
from adapters.copilot_training import (
    LOG_DIR,
    MistakeLog,
    TrainingError,
    TrainSettings,
    batches,
    encode,
    log_part,
    read_pairs,
    resolve_device,
)
from adapters.default_model import ensure_default_model
from decoding.copilot.binding import Binding, BindingError, weights_fingerprint
from decoding.copilot.checkpoint import read
from decoding.copilot.runner import CopilotConfigError, check_binding
from server.cli import parse_command_line
from server.config import load_config

from ..support import make_tiny_llama

SETTINGS = TrainSettings(
    top_k=8, hidden_size=64, layers=1, lr=3e-3, epochs=2, batch_size=4, device="cpu"
)
JOINT = JointSettings(epochs=3, lr=3e-3, batch_size=4)


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    return make_tiny_llama(
        tmp_path_factory.mktemp("joint") / "pilot", ensure_default_model(), initializer_range=0.2
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("joint-data") / "data.jsonl"
    with path.open("w") as f:
        for i in range(10):
            f.write(json.dumps({"prompt": f"Add {i} and {i}.", "response": f"It is {2 * i}."}))
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def trained(pilot, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint-run") / "fix"
    steps = list(train_joint(str(pilot), data, out, SETTINGS, JOINT))
    return out, steps


def examples_of(pilot, data):
    tokenizer = AutoTokenizer.from_pretrained(pilot)
    return [encode(tokenizer, p, r, SETTINGS.max_length) for p, r in read_pairs(data)]


def target_probability(log: MistakeLog) -> float:
    """Mean logged probability of the response token that came next (0 outside the top k)."""
    found = []
    for e in range(len(log)):
        stream = log.tokens[log.offsets[e] : log.offsets[e + 1]]
        targets = stream[int(log.prompt_lengths[e]) :]
        ids = log.top_ids[log.rows[e] : log.rows[e + 1]]
        probs = log.top_probs[log.rows[e] : log.rows[e + 1]].astype(np.float32)
        found.append(np.where(ids == targets[:, None], probs, 0).sum(-1))
    return float(np.concatenate(found).mean())


def test_the_copilot_binds_to_the_fine_tuned_pilot_and_is_refused_beside_the_original(
    trained, pilot
):
    out, steps = trained
    tuned = out / PILOT_DIR
    assert steps and steps[-1][0] == len(steps)
    check_binding("fix", str(out), str(tuned))  # no error: bound to the fine-tuned pilot
    with pytest.raises(CopilotConfigError, match=r"copilots\.fix .* cannot serve .*weights differ"):
        check_binding("fix", str(out), str(pilot))
    binding = read(out).binding
    assert binding.pilot == str(tuned.resolve()) and binding.space == "probs"
    assert binding.weights_hash == weights_fingerprint(tuned) != weights_fingerprint(pilot)


def test_the_fine_tuned_pilot_is_a_servable_model_folder_in_the_original_dtype(trained, pilot):
    out, _ = trained
    tuned = AutoModelForCausalLM.from_pretrained(out / PILOT_DIR)
    original = AutoModelForCausalLM.from_pretrained(pilot)
    assert tuned.dtype == original.dtype == torch.bfloat16
    moved = [
        not torch.equal(a, b)
        for a, b in zip(tuned.state_dict().values(), original.state_dict().values(), strict=True)
    ]
    assert all(moved)  # every tensor was fine-tuned
    assert AutoTokenizer.from_pretrained(out / PILOT_DIR).get_vocab() == (
        AutoTokenizer.from_pretrained(pilot).get_vocab()
    )
    assert not (out / PILOT_STATE).exists()  # replaced by the folder and the round logs


def test_each_round_is_logged_under_the_pilots_weights_of_that_moment(trained, pilot, data):
    out, _ = trained
    examples = examples_of(pilot, data)
    rounds = [MistakeLog.load(round_path(out, r)) for r in range(JOINT.epochs)]
    assert all(len(log) == len(examples) for log in rounds)
    # The first batch of round 0 was read by the untouched pilot: exactly its frozen log.
    first = [examples[i] for i in batches(len(examples), JOINT.batch_size, SETTINGS.seed, 0)[0]]
    original = AutoModelForCausalLM.from_pretrained(pilot, dtype=torch.float32).eval()
    frozen = log_part(original, first, SETTINGS.top_k, "cpu")
    n = len(frozen.top_ids)
    np.testing.assert_array_equal(rounds[0].top_ids[:n], frozen.top_ids)
    np.testing.assert_allclose(rounds[0].top_probs[:n], frozen.top_probs, atol=2e-3)
    # Later rounds see a pilot that has learnt the data: the responses grow likelier.
    likelihood = [target_probability(log) for log in rounds]
    assert likelihood[-1] > likelihood[0] + 0.1, likelihood
    # The last round is the fine-tuned pilot as saved and served.
    final = MistakeLog.concat(
        [MistakeLog.load(p) for p in sorted((out / LOG_DIR / FINAL_ROUND).glob("*.npz"))]
    )
    tuned = AutoModelForCausalLM.from_pretrained(out / PILOT_DIR, dtype=torch.float32).eval()
    again = log_part(tuned, examples[:4], SETTINGS.top_k, "cpu")
    np.testing.assert_array_equal(final.top_ids[: len(again.top_ids)], again.top_ids)
    assert target_probability(final) > likelihood[0] + 0.1


def test_a_killed_run_resumes_after_its_last_round_to_the_same_result(
    trained, pilot, data, tmp_path, monkeypatch
):
    out, _ = trained
    calls = []

    def dies_in_round_two(logits, examples):
        calls.append(len(examples))
        if len(calls) == 4:  # 10 examples in batches of 4: round 1 is calls 1-3
            raise KeyboardInterrupt
        return response_loss(logits, examples)

    monkeypatch.setattr(joint_module, "response_loss", dies_in_round_two)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        list(train_joint(str(pilot), data, killed, SETTINGS, JOINT))
    assert round_path(killed, 0).exists() and not round_path(killed, 1).exists()
    assert torch.load(killed / PILOT_STATE)["rounds"] == 1
    round0 = round_path(killed, 0).read_bytes()

    calls.clear()
    monkeypatch.setattr(joint_module, "response_loss", response_loss)
    list(train_joint(str(pilot), data, killed, SETTINGS, JOINT))
    assert round_path(killed, 0).read_bytes() == round0  # not redone
    for name in ("model.safetensors", "config.json"):
        assert (killed / PILOT_DIR / name).read_bytes() == (out / PILOT_DIR / name).read_bytes()
    for r in range(JOINT.epochs):
        np.testing.assert_array_equal(
            MistakeLog.load(round_path(killed, r)).top_ids,
            MistakeLog.load(round_path(out, r)).top_ids,
        )


def test_a_folder_of_another_run_is_refused(trained, pilot, data):
    out, _ = trained
    other = JointSettings(epochs=2, lr=3e-3, batch_size=4)
    with pytest.raises(TrainingError, match="holds a run for another"):
        list(train_joint(str(pilot), data, out, SETTINGS, other))


def test_the_config_block_serves_the_fine_tuned_pilot_with_its_copilot(trained):
    out, _ = trained
    config = load_config(out / SERVE_CONFIG, {})
    assert config.model.path == str((out / PILOT_DIR).resolve())
    [(name, entry)] = config.copilots.items()
    assert name == out.name and entry.path == str(out.resolve())
    check_binding(name, entry.path, config.model.path)


def test_response_loss_scores_response_tokens_only():
    logits = torch.randn(2, 6, 11)
    examples = [([1, 2, 3, 4, 5], 3), ([6, 7, 8, 9, 10, 0], 2)]
    # Stream position i is predicted at i - 1; the prompt's tokens and the padding are not.
    scores = torch.cat([logits[0, 2:4], logits[1, 1:5]])
    targets = torch.tensor([4, 5, 8, 9, 10, 0])
    torch.testing.assert_close(
        response_loss(logits, examples), torch.nn.functional.cross_entropy(scores, targets)
    )


def test_device_auto_picks_cuda_only_where_torch_sees_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_an_unusable_device_is_a_clear_error():
    with pytest.raises(TrainingError, match="--device cuda: torch cannot use it"):
        resolve_device("cuda")


def test_the_weights_fingerprint_follows_the_weights(pilot, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(pilot, copy)
    assert weights_fingerprint(copy) == weights_fingerprint(pilot)
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF  # the last sampled block ends at the last byte
    weights.write_bytes(bytes(raw))
    assert weights_fingerprint(copy) != weights_fingerprint(pilot)
    assert weights_fingerprint(tmp_path) is None


def test_a_binding_to_weights_fails_closed_without_them():
    vocab, config = {"a": 0}, {"hidden_size": 8}
    binding = Binding.of("tuned", vocab, config, weights="f" * 64)
    binding.check("tuned", vocab, config, "f" * 64)
    with pytest.raises(BindingError, match="weights differ"):
        binding.check("original", vocab, config, "0" * 64)
    with pytest.raises(BindingError, match="no safetensors file"):
        binding.check("hub-name", vocab, config, None)
    Binding.of("old", vocab, config).check("any", vocab, config, None)  # predates weights


def test_the_command_line_takes_the_joint_flags():
    args, _ = parse_command_line(
        ["copilot", "train", "--pilot", "embedded", "--data", "d.jsonl", "--out", "o", "--joint"]
        + ["--pilot-epochs", "2", "--pilot-lr", "1e-4"]
    )
    assert (args.joint, args.pilot_epochs, args.pilot_lr) == (True, 2, 1e-4)
    assert (args.space, args.device) == ("probs", "auto")
