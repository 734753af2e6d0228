import json
from types import SimpleNamespace

import pytest
import torch
from pydantic import Field

from decoding.contract import Correction, EngineSetup, Figure
from decoding.correction import decode_wire, parse_correction
from decoding.params import CorrectionError, CorrectionParams
from decoding.pipeline import StepPlugin
from decoding.registry import BUILT_IN, DEFAULT, Registry, RegistryError, load_correction
from decoding.spec import WIRE_KEY


class ShiftParams(CorrectionParams):
    alpha: float = Field(1.0, ge=0)


class _Identity(StepPlugin):
    name = "identity"

    def apply(self, logits, rows):
        return logits


def _correction(correction_name: str, figures=()) -> Correction:
    class Shift(Correction):
        name = correction_name
        params = ShiftParams

        def plugin(self, setup: EngineSetup) -> StepPlugin:
            return _Identity()

    Shift.figures = tuple(figures)
    return Shift()


FIRST, SECOND = _correction("first"), _correction("second", [Figure("n"), Figure("top", "max")])
REGISTRY = Registry((FIRST, SECOND))


def test_absent_or_empty_correction_names_nothing():
    assert not parse_correction(None, registry=REGISTRY)
    spec = parse_correction({}, registry=REGISTRY)
    assert not spec and spec.names == ()


@pytest.mark.parametrize("payload", [[], "x", 3])
def test_correction_must_be_an_object(payload):
    with pytest.raises(CorrectionError) as err:
        parse_correction(payload, registry=REGISTRY)
    assert err.value.param == "correction"


def test_unknown_key_is_named_with_what_is_served():
    with pytest.raises(CorrectionError, match="Unknown field 'correction.temperature'") as err:
        parse_correction({"temperature": 1}, registry=REGISTRY)
    assert err.value.param == "correction.temperature"
    assert "first, second, refinement" in err.value.message


def test_a_correction_of_another_registry_is_unknown():
    with pytest.raises(CorrectionError, match="Unknown field 'correction.first'"):
        parse_correction({"first": {}})  # the built-in registry


def test_validated_in_registry_order_and_round_trips():
    spec = parse_correction({"second": {"alpha": 0.5}, "first": {}}, registry=REGISTRY)
    assert spec.names == ("first", "second")  # the registry's order, not the request's
    wire = spec.to_wire()
    assert isinstance(wire, str) and json.loads(wire) == spec.to_json()
    assert decode_wire(wire, registry=REGISTRY) == spec


def test_refinement_is_request_level_and_never_on_the_wire():
    verifier = {"type": "regex", "pattern": "a"}
    spec = parse_correction({"refinement": {"verifier": verifier}, "first": {}}, registry=REGISTRY)
    assert spec.names == ("first", "refinement") and spec.refinement is not None
    assert json.loads(spec.to_wire()) == {"first": {"alpha": 1.0}}
    with pytest.raises(CorrectionError, match="per-step corrections only"):
        decode_wire(json.dumps({"refinement": {"verifier": verifier}}), registry=REGISTRY)


def test_field_errors_name_the_nested_field():
    with pytest.raises(CorrectionError) as err:
        parse_correction({"first": {"alpha": -1}}, registry=REGISTRY)
    assert err.value.param == "correction.first.alpha"
    with pytest.raises(CorrectionError) as err:
        parse_correction({"first": {"beta": 1}}, registry=REGISTRY)
    assert err.value.param == "correction.first.beta"


@pytest.mark.parametrize("value", [5, "{not json", json.dumps({"nope": {}})])
def test_wire_form_is_revalidated(value):
    with pytest.raises(CorrectionError):
        decode_wire(value, registry=REGISTRY)


def test_wire_key_is_a_flat_extra_args_key():
    assert isinstance(WIRE_KEY, str) and "." not in WIRE_KEY


def test_the_built_in_list_is_explicit_and_in_pipeline_order():
    assert DEFAULT.names == ("proxy_tuning", "copilot", "unlearning")
    assert DEFAULT.corrections == BUILT_IN


@pytest.mark.parametrize(
    "figures", [[Figure("n"), Figure("n")], [Figure("n", "mean")]], ids=["twice", "bad-reduce"]
)
def test_figures_must_be_unique_with_a_known_reduction(figures):
    with pytest.raises(RegistryError, match="figure names must be unique"):
        Registry((_correction("x", figures),))


def test_figures_are_laid_out_from_the_registry():
    assert [(name, f.name, f.reduce) for name, f in REGISTRY.figures] == [
        ("pipeline", "forced_stops", "sum"),  # the pipeline's own, first (decoding/pipeline.py)
        ("second", "n", "sum"),
        ("second", "top", "max"),
    ]
    assert REGISTRY.split([1.0, 2.0, 0.5]) == {
        "pipeline": {"forced_stops": 1.0},
        "second": {"n": 2.0, "top": 0.5},
    }
    assert REGISTRY.measured == ("second",)


@pytest.mark.parametrize("names", [("a", "a"), ("a", "refinement"), ("plugins",), ("pipeline",)])
def test_names_must_be_unique_and_not_reserved(names):
    with pytest.raises(RegistryError):
        Registry(tuple(_correction(n) for n in names))


def test_extras_load_by_reference_and_run_before_unlearning_s_blocks():
    registry = Registry.with_extras([f"{__name__}:SECOND"])
    assert registry.names == ("proxy_tuning", "copilot", "second", "unlearning")
    assert isinstance(registry["second"].plugin(None), StepPlugin)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_colon", "expected 'package.module:OBJECT'"),
        ("not_a_module_xyz:X", "cannot be loaded"),
        (f"{__name__}:MISSING", "cannot be loaded"),
        (f"{__name__}:ShiftParams", "not a decoding.contract.Correction"),
    ],
)
def test_a_bad_extra_reference_is_refused_with_the_reason(reference, message):
    with pytest.raises(RegistryError, match=message):
        load_correction(reference)


def test_a_plugin_recorder_is_per_correction():
    seen = []
    setup = EngineSetup(
        deployment=None,
        device=torch.device("cpu"),
        dtype=torch.float32,
        tokenizer="",
        vocab_size=4,
        recorder=lambda name: lambda rows, figures: seen.append((name, dict(figures))),
    )
    setup.recorder("second")([], {"n": torch.ones(0)})
    assert seen[0][0] == "second"


def test_admission_steps_exist_only_where_the_deployment_needs_them():
    # Proxy-tuning's renders per-model prompts, unlearning's gates forget sets; neither
    # exists without them.
    nothing = SimpleNamespace(deployment=SimpleNamespace(forget_sets={}, prompt_formats={}))
    assert [c.admission(nothing) for c in DEFAULT] == [None, None, None]
    assert FIRST.admission(nothing) is None  # the contract's default
