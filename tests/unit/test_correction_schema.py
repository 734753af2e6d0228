import json

import pytest
from pydantic import Field

from decoding import correction as mod
from decoding.correction import (
    PLUGIN_NAMES,
    WIRE_KEY,
    CorrectionError,
    PluginParams,
    decode_wire,
    parse_correction,
)


@pytest.fixture
def registry(monkeypatch):
    """A private plugin registry, so tests can register plugins without leaking them."""
    monkeypatch.setattr(mod, "_REGISTRY", {})
    return mod._REGISTRY


class ShiftParams(PluginParams):
    alpha: float = Field(1.0, ge=0)


def test_absent_or_empty_correction_names_no_plugin(registry):
    assert not parse_correction(None)
    spec = parse_correction({})
    assert not spec and spec.names == ()


@pytest.mark.parametrize("payload", [[], "x", 3])
def test_correction_must_be_an_object(registry, payload):
    with pytest.raises(CorrectionError) as err:
        parse_correction(payload)
    assert err.value.param == "correction"


def test_unknown_key_is_named(registry):
    with pytest.raises(CorrectionError, match="Unknown field 'correction.temperature'") as err:
        parse_correction({"temperature": 1})
    assert err.value.param == "correction.temperature"


@pytest.mark.parametrize("name", PLUGIN_NAMES)
def test_defined_but_unserved_plugin_says_not_available(registry, name):
    with pytest.raises(CorrectionError, match="not available on this server") as err:
        parse_correction({name: {}})
    assert err.value.param == f"correction.{name}"


def test_registered_plugin_is_validated_and_round_trips(registry):
    mod.register_plugin("copilot", ShiftParams)
    mod.register_plugin("proxy_tuning", ShiftParams)
    spec = parse_correction({"copilot": {"alpha": 0.5}, "proxy_tuning": {}})
    assert spec.names == ("proxy_tuning", "copilot")  # pipeline order, not request order
    wire = spec.to_wire()
    assert isinstance(wire, str) and json.loads(wire) == spec.to_json()
    assert decode_wire(wire) == spec


def test_plugin_field_errors_name_the_nested_field(registry):
    mod.register_plugin("proxy_tuning", ShiftParams)
    with pytest.raises(CorrectionError) as err:
        parse_correction({"proxy_tuning": {"alpha": -1}})
    assert err.value.param == "correction.proxy_tuning.alpha"
    with pytest.raises(CorrectionError) as err:
        parse_correction({"proxy_tuning": {"beta": 1}})
    assert err.value.param == "correction.proxy_tuning.beta"


def test_only_defined_names_can_register(registry):
    with pytest.raises(ValueError, match="not a correction"):
        mod.register_plugin("telepathy", ShiftParams)


@pytest.mark.parametrize("value", [5, "{not json", json.dumps({"nope": {}})])
def test_wire_form_is_revalidated(registry, value):
    with pytest.raises(CorrectionError):
        decode_wire(value)


def test_wire_key_is_a_flat_extra_args_key():
    assert isinstance(WIRE_KEY, str) and "." not in WIRE_KEY
