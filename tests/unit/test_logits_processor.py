"""The engine-side host of corrections, driven with vLLM's own BatchUpdate (no engine)."""

from types import SimpleNamespace

import pytest
import torch

from adapters import logits_processor
from adapters.logits_processor import LOGITS_PROCESSOR_FQCN, CorrigoLogitsProcessor
from adapters.manifest import DeploymentManifest, ManifestError, ModelEntry
from adapters.vllm_compat import BatchUpdate, MoveDirectionality, SamplingParams
from decoding.contract import Correction, EngineSetup
from decoding.correction import parse_correction
from decoding.params import CorrectionError, CorrectionParams
from decoding.pipeline import StepPlugin
from decoding.spec import WIRE_KEY


class Params(CorrectionParams):
    weight: float = 1.0


class _Unchanged(StepPlugin):
    name = "weighted"

    def apply(self, logits, rows):
        return logits


class Weighted(Correction):
    """An operator's extra correction (``[corrections] extra``) that leaves logits alone."""

    name = "weighted"
    params = Params

    def plugin(self, setup: EngineSetup) -> StepPlugin:
        return _Unchanged()


WEIGHTED = Weighted()
#: The deployment: no models declared, the extra correction above.
MANIFEST = DeploymentManifest(extra_corrections=(f"{__name__}:WEIGHTED",))

#: An engine's vLLM config as the processor reads it: one rank, the manifest above.
ONE_RANK = SimpleNamespace(
    additional_config=MANIFEST,
    parallel_config=SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1),
    model_config=SimpleNamespace(dtype=torch.float32, tokenizer="", get_vocab_size=lambda: 8),
)


def processor() -> CorrigoLogitsProcessor:
    return CorrigoLogitsProcessor(ONE_RANK, torch.device("cpu"), False)


def corrected(weight: float = 1.0) -> SamplingParams:
    spec = parse_correction({"weighted": {"weight": weight}}, registry=MANIFEST.registry())
    return SamplingParams(extra_args={WIRE_KEY: spec.to_wire()})


def plain() -> SamplingParams:
    return SamplingParams(extra_args={"unrelated": 1})


def update(size, removed=(), added=(), moved=()):
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


def weights(proc):
    rows = proc.pipeline.rows
    return {index: row.params("weighted").weight for index, row in rows.items()}


def test_fqcn_points_at_the_class():
    module, _, name = LOGITS_PROCESSOR_FQCN.partition(":")
    assert module == "adapters.logits_processor" and name == "CorrigoLogitsProcessor"


def test_validate_params_accepts_plain_and_refuses_bad_specs():
    CorrigoLogitsProcessor.validate_params(SamplingParams())
    CorrigoLogitsProcessor.validate_params(plain())
    CorrigoLogitsProcessor.validate_params(SamplingParams(extra_args={WIRE_KEY: "{}"}))
    with pytest.raises(CorrectionError, match="unknown copilot 'x'"):
        CorrigoLogitsProcessor.validate_params(
            SamplingParams(extra_args={WIRE_KEY: '{"copilot": {"name": "x"}}'})
        )
    with pytest.raises(ValueError, match="not valid JSON"):
        CorrigoLogitsProcessor.validate_params(SamplingParams(extra_args={WIRE_KEY: "{"}))


def test_validate_params_checks_against_the_manifest_the_server_installed(monkeypatch):
    copilot_x = SamplingParams(extra_args={WIRE_KEY: '{"copilot": {"name": "x"}}'})
    monkeypatch.setattr(logits_processor, "_front_end", logits_processor._front_end)
    logits_processor.install_front_end(
        DeploymentManifest(copilots={"x": ModelEntry("/copilots/x")})
    )
    CorrigoLogitsProcessor.validate_params(copilot_x)


def test_an_engine_started_without_corrigos_manifest_is_refused():
    config = SimpleNamespace(additional_config={}, parallel_config=ONE_RANK.parallel_config)
    with pytest.raises(ManifestError, match="corrigo serve"):
        CorrigoLogitsProcessor(config, torch.device("cpu"), False)


def test_is_not_argmax_invariant():
    assert processor().is_argmax_invariant() is False


def test_rows_follow_adds_removals_and_moves():
    proc = processor()
    out0, out2 = [5], [7]
    proc.update_state(
        update(
            3,
            added=[
                (0, corrected(0.5), [1, 2], out0),
                (1, plain(), [3], []),
                (2, corrected(2.0), [4], out2),
            ],
        )
    )
    assert weights(proc) == {0: 0.5, 2: 2.0}
    assert proc.pipeline.rows[0].stream.output is out0  # the live list, not a copy
    out0.append(6)
    assert proc.pipeline.rows[0].stream.tokens() == [1, 2, 5, 6]

    # Removal of 1, then 2 moves down into the hole (vLLM condenses the batch).
    proc.update_state(update(2, removed=[1], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    assert weights(proc) == {0: 0.5, 1: 2.0}

    proc.update_state(update(2, moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert weights(proc) == {0: 2.0, 1: 0.5}

    # A plain request added into a corrected row's slot clears it.
    proc.update_state(update(2, removed=[0], added=[(0, plain(), [9], [])]))
    assert weights(proc) == {1: 0.5}

    # Swap between a plain row and a corrected one moves only the corrected one.
    proc.update_state(update(2, moved=[(1, 0, MoveDirectionality.SWAP)]))
    assert weights(proc) == {0: 0.5}

    proc.update_state(None)  # batch unchanged
    assert weights(proc) == {0: 0.5}


def test_apply_without_corrected_rows_is_free():
    proc = processor()
    proc.update_state(update(1, added=[(0, plain(), [1], [])]))
    logits = torch.randn(1, 8)
    assert proc.apply(logits) is logits
