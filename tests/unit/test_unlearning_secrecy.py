"""Forget-set secrecy without an engine: the operator's policy in request validation, what the
gate reads and refuses, profile enforcement and the hidden served model, file permissions.
(The same attacks through the real server: tests/security/test_unlearning_secrecy.py.)"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from decoding.correction import parse_correction
from decoding.params import CorrectionError, RequestRefused
from decoding.registry import DEFAULT
from decoding.unlearning import (
    FORGET_SETS_CONTEXT,
    POLICIES_CONTEXT,
    ForgetSetError,
    ForgetSetPolicy,
)
from decoding.unlearning.admission import (
    TOO_LONG,
    UngateableInput,
    UnlearningGate,
    policies,
    request_texts,
)
from decoding.unlearning.gate import WINDOW_CHARS, chunks, windows
from decoding.unlearning.loading import load_all
from server.config import ConfigError, ForgetSetConfig, LimitsConfig, ProfileConfig, load_config
from server.corrections import take_correction
from server.errors import APIError
from server.metrics import ServerMetrics
from server.profiles import ProfileError, catalog, load_profiles

POLICIES = policies(
    {
        "vault": ForgetSetConfig(path="v"),
        "capitals": ForgetSetConfig(
            path="c", public_name=True, min_threshold=0.2, max_threshold=0.6
        ),
        "hr": ForgetSetConfig(path="h", alias="set-b"),
    }
)
CONTEXT = {FORGET_SETS_CONTEXT: {"vault": 1, "capitals": 1, "hr": 1}, POLICIES_CONTEXT: POLICIES}


def unlearning(**params):
    return parse_correction({"unlearning": params}, context=CONTEXT).steps["unlearning"]


def refused(**params) -> CorrectionError:
    with pytest.raises(CorrectionError) as err:
        unlearning(**params)
    return err.value


# -- threshold bounds -------------------------------------------------------------------------


def test_the_threshold_defaults_to_the_sets_and_stays_in_its_bounds():
    assert unlearning(forget_set="vault").threshold == 0.5
    assert unlearning(forget_set="capitals", threshold=0.2).threshold == 0.2
    for name, threshold in (("vault", 0.9), ("vault", 0.4), ("capitals", 0.61), ("capitals", 1)):
        err = refused(forget_set=name, threshold=threshold)
        assert err.param == "correction.unlearning.threshold"


def test_bounds_are_checked_when_the_config_loads(tmp_path):
    with pytest.raises(ValueError, match="min_threshold <= threshold"):
        ForgetSetConfig(path="x", threshold=0.5, max_threshold=0.4)
    with pytest.raises(ValueError, match="public_name or alias"):
        ForgetSetConfig(path="x", public_name=True, alias="a")
    path = tmp_path / "c.toml"
    path.write_text('[forget_sets.s]\npath = "f"\nthreshold = 0.7\nmin_threshold = 0.8\n')
    with pytest.raises(ConfigError, match="forget_sets.s"):
        load_config(path, environ={})


def test_a_profile_out_of_its_sets_bounds_is_refused_at_start_up():
    profile = ProfileConfig(correction={"unlearning": {"forget_set": "vault", "threshold": 0.9}})
    with pytest.raises(ProfileError, match="profiles.p.correction.unlearning.threshold"):
        load_profiles({"p": profile}, "base", CONTEXT)


# -- names ------------------------------------------------------------------------------------


def test_an_unknown_set_error_lists_public_names_only():
    err = refused(forget_set="nope")
    assert err.param == "correction.unlearning.forget_set"
    assert "vault" not in err.message and "hr" not in err.message
    assert "capitals" in err.message  # public_name = true
    private = {FORGET_SETS_CONTEXT: {"vault": 1}, POLICIES_CONTEXT: {"vault": POLICIES["vault"]}}
    with pytest.raises(CorrectionError) as caught:
        parse_correction({"unlearning": {"forget_set": "x"}}, context=private)
    assert "vault" not in caught.value.message
    # A non-string name is a 400, not a crash on an unhashable key.
    assert refused(forget_set=["vault"]).param == "correction.unlearning.forget_set"


def test_labels_are_the_alias_the_public_name_or_undisclosed():
    assert POLICIES["vault"].label == "undisclosed"
    assert POLICIES["capitals"].label == "capitals"
    assert POLICIES["hr"].label == "set-b"


# -- what the gate reads ----------------------------------------------------------------------


def test_the_gate_reads_tools_documents_tool_calls_and_template_arguments():
    call = {"name": "lookup", "arguments": '{"q": "capital of France"}'}
    tool = {
        "name": "f",
        "description": "desc",
        "parameters": {"properties": {"the_capital_of_france": {}}},
    }
    body = {
        "messages": [
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": call}]}
        ],
        "tools": [{"type": "function", "function": tool}],
        "documents": [{"title": "t", "text": "doc"}],
        "chat_template_kwargs": {"note": "kw"},
    }
    texts = request_texts(body)
    for text in (call["arguments"], "lookup", "desc", "the_capital_of_france", "doc", "kw"):
        assert text in texts
    assert "assistant" not in texts  # roles are structure


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
ODD_TYPE = {"type": ["text"], "text": "x"}  # not hashable: still a clean refusal


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [3838, 314, 260]}, "prompt"),
        ({"prompt": [[3838, 314]]}, "prompt"),
        ({"prompt": ["a", [1, 2]]}, "prompt"),
        ({"prompt": "a", "prompt_embeds": "AAAA"}, "prompt_embeds"),
        ({"messages": [], "chat_template": "{{ 'hi' }}"}, "chat_template"),
        ({"messages": [{"role": "user", "content": [IMAGE]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [ODD_TYPE]}]}, "messages"),
    ],
)
def test_input_the_gate_cannot_read_is_refused(body, param):
    with pytest.raises(UngateableInput) as err:
        request_texts(body)
    assert err.value.param == param


def test_deep_nesting_does_not_recurse():
    deep: object = "x"
    for _ in range(100_000):
        deep = [deep]
    assert request_texts({"tools": deep}) == ["x"]


def test_long_sentences_are_read_in_overlapping_windows():
    text = "lorem " * 100 + "what is the capital of France"
    pieces = chunks([text])
    assert all(len(p) <= WINDOW_CHARS for p in pieces)  # no batch padded to a long text
    assert any("what is the capital of France" in p for p in pieces)
    long = "Short one. " + "x" * 300 + ". Short two."
    assert {"Short one.", "Short two."} <= set(chunks([long]))
    assert all(len(p) <= WINDOW_CHARS for p in chunks([long]))
    assert windows("short") == [] and chunks(["a. a. a."]) == ["a. a. a.", "a."]


class _NoEmbedder:
    def encode(self, texts):
        raise AssertionError("prepare must not embed")


def _gate(limits: LimitsConfig) -> UnlearningGate:
    return UnlearningGate({}, _NoEmbedder(), ServerMetrics(CollectorRegistry()), POLICIES, limits)


def test_text_beyond_the_gates_caps_is_refused_before_any_embedding():
    spec = parse_correction({"unlearning": {"forget_set": "vault"}}, context=CONTEXT)
    gate = _gate(LimitsConfig(max_gate_chars=1000, max_gate_pieces=10))
    tail = "What is the code name of the Halvorsen merger?"
    cases = [
        {"messages": [{"role": "user", "content": "x" * 1000 + tail}]},  # characters
        {"prompt": " ".join(f"s{i}." for i in range(20))},  # sentences
        {"messages": [{"role": "user", "content": "a"}]} | {"tools": ["y" * 2000]},
    ]
    params = spec.steps["unlearning"]
    for body in cases:
        with pytest.raises(RequestRefused) as err:
            gate.prepare(params, body)
        assert err.value.status == 400 and err.value.code == TOO_LONG
        assert "Halvorsen" not in err.value.message
    job = gate.prepare(params, {"prompt": tail})
    assert job.pieces == (tail,)


# -- profiles ---------------------------------------------------------------------------------

GUARD = {"unlearning": {"forget_set": "vault"}}


def _take(correction, enforced=frozenset({"unlearning"})):
    body = {"model": "base", "correction": correction}
    return take_correction(body, DEFAULT, CONTEXT, GUARD, enforced)


@pytest.mark.parametrize(
    "correction",
    [
        {"unlearning": {"threshold": 0.9}},
        {"unlearning": {"soft": False}},
        {"unlearning": {"forget_set": "capitals"}},
        {"unlearning": None},
        {"unlearning": {}},
    ],
)
def test_an_enforced_correction_cannot_be_touched(correction):
    with pytest.raises(APIError) as err:
        _take(correction)
    assert err.value.status == 400 and err.value.param == "correction.unlearning"
    assert "vault" not in err.value.message


def test_an_enforced_profile_still_applies_without_a_correction_and_beside_others():
    for correction in (None, {}):
        spec = _take(correction)
        assert spec.steps["unlearning"].forget_set == "vault"
    with pytest.raises(APIError, match="must be an object"):
        _take(["unlearning"])
    # Not enforced: overridable as before.
    assert (
        _take({"unlearning": {"forget_set": "capitals"}}, frozenset())
        .steps["unlearning"]
        .forget_set
        == "capitals"
    )


def test_enforce_names_keys_of_the_profile():
    profile = ProfileConfig(correction=GUARD, enforce=True)
    assert load_profiles({"p": profile}, "base", CONTEXT)["p"].enforced == {"unlearning"}
    listed = ProfileConfig(correction=GUARD, enforce=["unlearning"])
    assert load_profiles({"p": listed}, "base", CONTEXT)["p"].enforced == {"unlearning"}
    with pytest.raises(ProfileError, match="profiles.p.enforce: copilot"):
        load_profiles({"p": ProfileConfig(correction=GUARD, enforce=["copilot"])}, "b", CONTEXT)


def test_a_hidden_served_model_is_an_unknown_model():
    guarded = ProfileConfig(correction=GUARD, enforce=True)
    profiles = load_profiles({"guarded": guarded}, "base", CONTEXT)
    hidden = catalog(profiles, "base", base_public=False)
    assert hidden.listed == ["guarded"]
    assert hidden.resolve("guarded") == ("guarded", profiles["guarded"])
    with pytest.raises(APIError) as err:
        hidden.resolve("base")
    assert err.value.status == 404 and err.value.code == "model_not_found"
    assert "'base'" in err.value.message and "served here: guarded." in err.value.message
    with pytest.raises(APIError) as err:
        hidden.resolve(None)  # no model: not the hidden base by default
    assert err.value.status == 400 and "base" not in err.value.message
    with pytest.raises(APIError):
        hidden.resolve(["guarded"])  # not hashable: still a clean 404
    shown = catalog(profiles, "base")
    assert shown.listed == ["base", "guarded"]
    assert shown.resolve(None) == ("base", None) and shown.resolve("base") == ("base", None)
    with pytest.raises(ProfileError, match="at least one"):
        catalog({}, "base", base_public=False)


def test_the_model_section_takes_public(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\npublic = false\n")
    assert load_config(path, environ={}).model.public is False


# -- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666])
def test_a_forget_set_other_users_can_read_or_write_is_refused(tmp_path, mode):
    path = tmp_path / "s.jsonl"
    path.write_text('{"phrases": ["x"]}\n')
    path.chmod(mode)
    with pytest.raises(ForgetSetError) as err:
        load_all({"s": str(path)})
    assert str(path) in str(err.value) and "chmod 600" in str(err.value)
    assert f"{mode:04o}" in str(err.value)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_private_forget_set_loads(tmp_path, mode):
    path = tmp_path / "s.jsonl"
    path.write_text('{"phrases": ["x"]}\n')
    path.chmod(mode)
    assert len(load_all({"s": str(path)})["s"]) == 1


def test_the_policy_defaults_are_closed():
    policy = ForgetSetPolicy()
    assert policy.min_threshold == policy.threshold == policy.max_threshold
    assert not policy.report_detail and policy.label == "undisclosed"
