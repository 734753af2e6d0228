"""Custom verifiers from entry points (a real distribution on sys.path, found by
importlib.metadata), enabled by name in the config."""

import asyncio
import sys
import textwrap

import pytest

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.refinement import VERIFIER_TYPES_CONTEXT, VerifyContext, build_verifier
from server.config import VerifierConfig
from server.refinement.verifier_plugins import VerifierPluginError, load_verifiers
from server.refinement.verifiers import SERVER_VERIFIER_TYPES, server_verifier_types

PLUGIN = textwrap.dedent(
    """
    from pydantic import Field

    from decoding.refinement import Verdict, VerifierParams


    class WordLimit:
        class Params(VerifierParams):
            max_words: int = Field(10, ge=1)

        exact = True

        def __init__(self, params, options):
            self.limit = min(params.max_words, options.get("hard_cap", 1000))

        async def verify(self, candidate, ctx):
            words = len(candidate.split())
            ok = words <= self.limit
            return Verdict(self.name, ok, 1.0 if ok else 0.0, "" if ok else "Too long.")
    """
)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A distribution declaring ``word_limit`` in the ``corrigo.verifiers`` group."""
    (tmp_path / "corrigo_test_plugin.py").write_text(PLUGIN)
    info = tmp_path / "corrigo_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: corrigo-test-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[corrigo.verifiers]\nword_limit = corrigo_test_plugin:WordLimit\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("corrigo_test_plugin", None)


def test_a_configured_entry_point_becomes_a_verifier_type(installed):
    plugins = load_verifiers(
        {"short": VerifierConfig(entry_point="word_limit", options={"hard_cap": 3})}
    )
    types = server_verifier_types(plugins)
    context = {VERIFIER_TYPES_CONTEXT: types}
    spec = parse_correction(
        {"refinement": {"verifier": {"type": "short", "max_words": 5}}}, context=context
    )
    params = spec.refinement
    verifier = build_verifier(params.verifier, types)
    assert verifier.name == "short" and verifier.exact
    ctx = VerifyContext([])
    assert asyncio.run(verifier.verify("one two three", ctx)).accepted
    assert not asyncio.run(verifier.verify("one two three four", ctx)).accepted  # hard cap 3
    with pytest.raises(CorrectionError) as err:
        parse_correction(
            {"refinement": {"verifier": {"type": "short", "max_words": 0}}}, context=context
        )
    assert err.value.param == "correction.refinement.verifier.max_words"
    # Loading a plugin changes no other registry: without it, the type is unknown.
    with pytest.raises(CorrectionError) as err:
        parse_correction(
            {"refinement": {"verifier": {"type": "short"}}},
            context={VERIFIER_TYPES_CONTEXT: SERVER_VERIFIER_TYPES},
        )
    assert err.value.param == "correction.refinement.verifier.type"


def test_installed_but_not_configured_is_not_available(installed):
    context = {VERIFIER_TYPES_CONTEXT: server_verifier_types(load_verifiers({}))}
    with pytest.raises(CorrectionError) as err:
        parse_correction({"refinement": {"verifier": {"type": "word_limit"}}}, context=context)
    assert err.value.param == "correction.refinement.verifier.type"


@pytest.mark.parametrize("name", ["regex", "python_tests", "webhook", "all"])
def test_a_plugin_cannot_take_a_built_in_name(installed, name):
    plugins = load_verifiers({name: VerifierConfig(entry_point="word_limit")})
    with pytest.raises(VerifierPluginError, match=f"'{name}'"):
        server_verifier_types(plugins)


def test_a_missing_entry_point_is_a_clear_startup_error(installed):
    with pytest.raises(VerifierPluginError, match="no entry point 'nope'.*word_limit"):
        load_verifiers({"nope": VerifierConfig()})
