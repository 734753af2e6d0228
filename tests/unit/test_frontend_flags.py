"""`corrigo serve` takes `vllm serve` flags verbatim: sorted into [engine], [frontend] and
corrigo's own keys by vLLM's parser, refused with a reason where corrigo cannot honour them."""

from __future__ import annotations

import dataclasses
import re

import pytest

from adapters.engine import ServedModel, engine_args
from adapters.frontend import (
    ALWAYS_ON,
    CORRIGO_KEYS,
    FRONTEND_KEYS,
    REFUSED,
    FrontendConfigError,
    frontend_namespace,
    parse_serve_flags,
)
from adapters.vllm_compat import FrontendArgs, serve_parser
from server.cli import main, parse_command_line, serve_overrides
from server.config import ConfigError, load_config

MODEL = ServedModel(path="unused", model_id="m")


def overrides(*argv: str) -> dict:
    args, rest = parse_command_line(["serve", *argv])
    return serve_overrides(args, rest)


def namespace(frontend: dict, engine: dict | None = None):
    return frontend_namespace(frontend, engine_args(MODEL, engine or {}))


def test_a_vllm_serve_command_line_works_as_is():
    # `vllm serve M --max-model-len 512 --tool-call-parser hermes --enable-auto-tool-choice`
    assert overrides(
        "M", "--max-model-len", "512", "--tool-call-parser", "hermes", "--enable-auto-tool-choice"
    ) == {
        "model.path": "M",
        "engine.max_model_len": 512,
        "frontend.tool_call_parser": "hermes",
        "frontend.enable_auto_tool_choice": True,
    }


def test_corrigo_and_vllm_flags_mix_in_any_order_and_spelling():
    got = overrides(
        "--port=9000",
        "-tp",
        "2",
        "M",
        "--served_model_name",
        "chat",
        "--reasoning-parser",
        "deepseek_r1",
        "--log-level",
        "debug",
        "--enable_lora",
        "--no-enable-log-deltas",
    )
    assert got == {
        "server.port": 9000,
        "model.served_model_name": "chat",
        "server.log_level": "debug",
        "model.path": "M",
        "engine.tensor_parallel_size": 2,
        "engine.reasoning_parser": "deepseek_r1",
        "engine.enable_lora": True,
        "frontend.enable_log_deltas": False,
    }


def test_only_the_flags_given_override():
    # No vLLM default is written into the config: it would hide the config file's values.
    assert parse_serve_flags([]).overrides() == {}
    assert overrides() == {}
    assert parse_serve_flags(["--max-model-len", "64"]).overrides() == {"engine.max_model_len": 64}


def test_command_line_beats_the_file_and_the_environment_beats_both(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[engine]\nmax_model_len = 1024\nseed = 3\n[frontend]\nresponse_role = "bot"\n'
        'chat_template_content_format = "string"\n'
    )
    flags = overrides("--max-model-len", "512", "--response-role", "cli")
    config = load_config(path, flags, environ={"CORRIGO_FRONTEND__RESPONSE_ROLE": "env"})
    assert config.engine == {"max_model_len": 512, "seed": 3}
    assert config.frontend == {"response_role": "env", "chat_template_content_format": "string"}


def test_lora_modules_in_both_forms_become_toml_tables():
    got = parse_serve_flags(
        ["--lora-modules", "a=/x", '{"name": "b", "path": "/y", "base_model_name": "m"}']
    )
    assert [
        (m["name"], m["path"], m.get("base_model_name")) for m in got.frontend["lora_modules"]
    ] == [
        ("a", "/x", None),
        ("b", "/y", "m"),
    ]
    # ... which [frontend] gives back to vLLM's parser as they came.
    args = namespace(got.frontend)
    assert [(m.name, m.path, m.base_model_name) for m in args.lora_modules] == [
        ("a", "/x", None),
        ("b", "/y", "m"),
    ]
    strings = namespace({"lora_modules": ["a=/x"]}).lora_modules
    assert [(m.name, m.path) for m in strings] == [("a", "/x")]


def test_what_corrigo_always_does_is_accepted_on_and_refused_off():
    assert overrides("--enable-request-id-headers") == {}
    with pytest.raises(ConfigError, match="--no-enable-request-id-headers cannot be honoured"):
        overrides("--no-enable-request-id-headers")
    assert namespace({"enable_request_id_headers": True}).enable_request_id_headers is True
    with pytest.raises(FrontendConfigError, match="cannot be turned off: corrigo always"):
        namespace({"enable_request_id_headers": False})


def test_api_key_maps_to_corrigos_keys():
    assert overrides("--api-key", "k1", "k2") == {"auth.api_keys": ["k1", "k2"]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--ssl-keyfile", "k.pem"],
            "--ssl-keyfile is not supported by corrigo: corrigo serves plain HTTP",
        ),
        (["--root-path", "/x"], "--root-path is not supported by corrigo"),
        (
            ["--middleware", "a.b"],
            "--middleware is not supported by corrigo: extra ASGI middleware",
        ),
        (["--headless"], "--headless is not supported by corrigo: corrigo runs one API server"),
        (["--api-server-count", "2"], "--api-server-count is not supported by corrigo"),
        (
            ["--allowed-origins", '["*"]'],
            "--allowed-origins is not supported by corrigo: corrigo sends no CORS",
        ),
        (["--uvicorn-log-level", "debug"], "use corrigo's --log-level"),
        (["--tool-server", "demo"], "--tool-server is not supported by corrigo"),
        (["--logits-processors", "a.B"], "--logits-processors is set by corrigo"),
        (["--additional-config", "{}"], "--additional-config is set by corrigo"),
        (["--no-such-flag"], "vLLM's serve parser: unrecognized arguments: --no-such-flag"),
        (["--max-model-len", "many"], "argument --max-model-len: invalid"),
        (
            ["--chat-template-content-format", "yaml"],
            "argument --chat-template-content-format: invalid choice",
        ),
    ],
)
def test_refused_and_invalid_flags_say_why(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        overrides(*argv)


def test_every_refused_flag_is_a_real_vllm_flag_and_none_is_both():
    dests = {a.dest for a in serve_parser()._actions}
    assert set(REFUSED) <= dests
    assert not FRONTEND_KEYS & set(REFUSED)
    # Every front-end field vLLM has is either handed to vLLM, corrigo's own, or refused.
    fields = {f.name for f in dataclasses.fields(FrontendArgs)}
    assert fields == FRONTEND_KEYS | (fields & (set(REFUSED) | set(CORRIGO_KEYS) | set(ALWAYS_ON)))


def test_several_served_model_names_and_two_models_are_refused():
    with pytest.raises(ConfigError, match="corrigo serves one model id"):
        overrides("--served-model-name", "a", "b")
    with pytest.raises(ConfigError, match="sets model.path twice"):
        overrides("M", "--model", "N")


def test_cli_exits_2_with_the_reason(capsys):
    assert main(["serve", "--ssl-certfile", "c.pem"]) == 2
    assert "corrigo: --ssl-certfile is not supported by corrigo" in capsys.readouterr().err
    assert main(["serve", "--max-model-len"]) == 2
    assert "argument --max-model-len: expected one argument" in capsys.readouterr().err


def test_other_commands_still_refuse_foreign_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "unlearning", "--max-model-len", "5"])
    assert exit_.value.code == 2


def test_frontend_settings_reach_vllms_namespace_with_the_engines():
    args = namespace(
        {
            "tool_call_parser": "hermes",
            "enable_auto_tool_choice": True,
            "response_role": "bot",
            "default_chat_template_kwargs": {"enable_thinking": False},
            "enable_log_outputs": True,
        },
        {"reasoning_parser": "deepseek_r1", "enable_log_requests": True, "max_model_len": 99},
    )
    assert (args.tool_call_parser, args.enable_auto_tool_choice) == ("hermes", True)
    assert args.response_role == "bot"
    assert args.default_chat_template_kwargs == {"enable_thinking": False}
    # Engine-side values the serving classes read come from the engine arguments.
    assert args.structured_outputs_config.reasoning_parser == "deepseek_r1"
    assert (args.enable_log_requests, args.max_model_len) == (True, 99)
    assert (args.model, args.served_model_name) == ("unused", ["m"])
    # vLLM's defaults for everything else.
    assert args.chat_template is None and args.chat_template_content_format == "auto"


@pytest.mark.parametrize(
    ("frontend", "engine", "message"),
    [
        (
            {"max_model_len": 5},
            {},
            "frontend.max_model_len is a vLLM engine argument: put it in [engine]",
        ),
        (
            {"reasoning_parser": "x"},
            {},
            "frontend.reasoning_parser is a vLLM engine argument: put it in [engine]",
        ),
        ({"port": 5}, {}, "frontend.port is a corrigo setting: use [server] port"),
        ({"api_key": ["k"]}, {}, "frontend.api_key is a corrigo setting: use [auth] api_keys"),
        ({"ssl_keyfile": "k"}, {}, "frontend.ssl_keyfile is not supported by corrigo"),
        (
            {"tool_call_parsr": "hermes"},
            {},
            "frontend.tool_call_parsr is not a vLLM front-end setting",
        ),
        (
            {"enable_auto_tool_choice": "yes"},
            {},
            "frontend.enable_auto_tool_choice must be true or false",
        ),
        ({"response_role": True}, {}, "frontend.response_role is not a true/false setting"),
        (
            {"chat_template_content_format": "yaml"},
            {},
            "[frontend] rejected by vLLM: argument --chat-template-content-format: invalid choice",
        ),
        (
            {"enable_auto_tool_choice": True},
            {},
            "--enable-auto-tool-choice requires --tool-call-parser",
        ),
        (
            {"enable_auto_tool_choice": True, "tool_call_parser": "nope"},
            {},
            "invalid tool call parser: nope",
        ),
        ({}, {"reasoning_parser": "nope"}, "invalid reasoning parser: nope"),
        ({"enable_log_outputs": True}, {}, "--enable-log-outputs requires --enable-log-requests"),
        (
            {"chat_template": "/no/such/template.jinja"},
            {},
            "vLLM rejects the [frontend]/[engine] settings",
        ),
        ({"lora_modules": ["{not json"]}, {}, "Invalid JSON format for --lora-modules"),
    ],
)
def test_bad_frontend_settings_name_the_key(frontend, engine, message):
    with pytest.raises(FrontendConfigError, match=re.escape(message)):
        namespace(frontend, engine)
