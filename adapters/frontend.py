"""vLLM's ``vllm serve`` flags in corrigo: where each one goes, parsed and checked by vLLM.

A ``vllm serve`` command line holds three kinds of flags, told apart by vLLM's own classes:

- engine flags: fields of ``AsyncEngineArgs`` (``--max-model-len``, ``--enable-lora``,
  ``--reasoning-parser``...). They go to ``[engine]`` (adapters/engine.py validates them);
- front-end flags: fields of vLLM's ``FrontendArgs`` (``--tool-call-parser``,
  ``--chat-template``, ``--lora-modules``...), read by vLLM's serving classes. They go to
  ``[frontend]``, under the flag's argparse name (``tool_call_parser``);
- the launcher's own (``--headless``, ``--api-server-count``, ``--grpc``) and the server's
  (``--host``, ``--ssl-keyfile``, ``--middleware``...). corrigo is the server: the flags naming
  one of its settings map to that setting (:data:`CORRIGO_KEYS`); the others are refused with
  the reason (:data:`REFUSED`), never accepted and ignored.

Values are parsed by vLLM's parser in both places: command-line flags as ``vllm serve`` parses
them, and ``[frontend]`` keys by turning each back into its flag (:func:`frontend_argv`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import RESERVED_ENGINE_ARGS
from .vllm_compat import (
    AsyncEngineArgs,
    FrontendArgs,
    ServeArgsError,
    import_parser_plugins,
    serve_parser,
    validate_api_server_args,
    validate_parsed_serve_args,
)

#: ``vllm serve`` flags that are corrigo settings, by argparse name: the flag sets that dotted
#: config key (on the command line only; in ``[frontend]`` they are refused, naming the key).
CORRIGO_KEYS: dict[str, str] = {
    "model_tag": "model.path",
    "host": "server.host",
    "port": "server.port",
    "api_key": "auth.api_keys",
}

_ONE_SERVER = (
    "corrigo runs one API server in front of one engine; scale out with several corrigo "
    "servers behind a load balancer (README: Scaling out)"
)
_TLS = "corrigo serves plain HTTP: terminate TLS at a reverse proxy in front of it"
_CORS = (
    "corrigo sends no CORS headers: it accepts only application/json request bodies so that "
    "web pages on other origins cannot use it (docs/security.md)"
)
_ACCESS_LOG = (
    "corrigo writes its own access log (the 'corrigo.access' logger, with request ids); "
    "uvicorn's is not used"
)
_NOT_ROUTED = "corrigo does not serve the routes it enables"

#: ``vllm serve`` flags corrigo cannot honour, by argparse name, with the reason.
REFUSED: dict[str, str] = {
    "uvicorn_log_level": "use corrigo's --log-level ([server] log_level)",
    "disable_uvicorn_access_log": _ACCESS_LOG,
    "disable_access_log_for_endpoints": _ACCESS_LOG,
    "uds": "corrigo listens on TCP: use --host and --port",
    "ssl_keyfile": _TLS,
    "ssl_certfile": _TLS,
    "ssl_ca_certs": _TLS,
    "ssl_cert_reqs": _TLS,
    "ssl_ciphers": _TLS,
    "enable_ssl_refresh": _TLS,
    "root_path": "corrigo's routes are absolute: strip a path prefix at the reverse proxy",
    "middleware": (
        "extra ASGI middleware would run outside corrigo's authentication, limits and request "
        "ids; put such logic in a reverse proxy"
    ),
    "allowed_origins": _CORS,
    "allowed_methods": _CORS,
    "allowed_headers": _CORS,
    "allow_credentials": _CORS,
    "disable_fastapi_docs": "corrigo serves its own OpenAPI document (/openapi.json, /docs)",
    "enable_offline_docs": "corrigo serves its own OpenAPI document (/openapi.json, /docs)",
    "h11_max_incomplete_event_size": "corrigo bounds request bodies with [limits] max_request_bytes",
    "h11_max_header_count": "corrigo bounds request bodies with [limits] max_request_bytes",
    "sse_keep_alive_interval": (
        "vLLM sends these comments from its own routes, which corrigo replaces; corrigo's "
        "streams send none"
    ),
    "headless": _ONE_SERVER,
    "api_server_count": _ONE_SERVER,
    "grpc": _ONE_SERVER,
    "grpc_port": _ONE_SERVER,
    "data_parallel_supervisor_port": _ONE_SERVER,
    "dp_supervisor_probe_interval_s": _ONE_SERVER,
    "dp_supervisor_probe_timeout_s": _ONE_SERVER,
    "dp_supervisor_probe_failure_threshold": _ONE_SERVER,
    "tokens_only": f"{_NOT_ROUTED} (/inference/v1/generate, /render)",
    "enable_scale_out": f"{_NOT_ROUTED} (/inference/v1/generate, /render)",
    "enable_tokenizer_info_endpoint": f"{_NOT_ROUTED} (/tokenizer_info)",
    "enable_server_load_tracking": f"{_NOT_ROUTED} (/load)",
    "cohere_is_reasoning_model": f"{_NOT_ROUTED} (/cohere/v2/chat)",
    "cohere_format": f"{_NOT_ROUTED} (/cohere/v2/chat)",
    "anthropic_disabled_thinking_effort": f"{_NOT_ROUTED} (/v1/messages)",
    "enable_flash_late_interaction": "corrigo serves generative models only (no pooling routes)",
    "tool_server": (
        "the Responses API's built-in tools run extra generations inside vLLM, where corrigo "
        "can neither admit nor correct them"
    ),
}

#: Flags for what corrigo always does, by argparse name: accepted when on (and then nothing
#: more to do), refused when turned off, with the reason.
ALWAYS_ON: dict[str, str] = {
    "enable_request_id_headers": "corrigo always answers with X-Request-Id (server/request_id.py)",
}

#: The front-end settings ``[frontend]`` hands to vLLM: vLLM's ``FrontendArgs`` fields, less the
#: ones above (``tokens_only``, which vLLM also counts as an engine argument, is refused).
FRONTEND_KEYS: frozenset[str] = (
    frozenset(f.name for f in dataclasses.fields(FrontendArgs))
    - CORRIGO_KEYS.keys()
    - REFUSED.keys()
    - ALWAYS_ON.keys()
)
#: vLLM's engine arguments (``[engine]``).
ENGINE_KEYS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


class FrontendConfigError(ValueError):
    """A ``vllm serve`` flag or ``[frontend]`` key corrigo refuses, or vLLM rejects; the
    message names it and says why."""


@dataclass(frozen=True)
class ServeFlags:
    """The ``vllm serve`` flags of one command line, sorted by where they go. Only the flags
    given are here, so that none replaces a config-file value with a vLLM default."""

    #: Engine arguments, as vLLM's parser typed them (``[engine]`` keys).
    engine: dict[str, Any] = field(default_factory=dict)
    #: Front-end settings, as TOML values (``[frontend]`` keys).
    frontend: dict[str, Any] = field(default_factory=dict)
    #: corrigo settings, by dotted config key (``server.port``).
    corrigo: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """Everything as dotted config keys (``engine.max_model_len``...)."""
        return {
            **{f"engine.{k}": v for k, v in self.engine.items()},
            **{f"frontend.{k}": v for k, v in self.frontend.items()},
            **self.corrigo,
        }


def parse_serve_flags(argv: Sequence[str]) -> ServeFlags:
    """Sort ``vllm serve`` flags (and its positional MODEL) by where they go, each parsed by
    vLLM's parser; :class:`FrontendConfigError` for one vLLM rejects or corrigo refuses."""
    parser = serve_parser(given_only=True)
    try:
        given = vars(parser.parse_args(list(argv)))
    except ServeArgsError as exc:
        raise FrontendConfigError(f"vLLM's serve parser: {exc}") from None
    flags = _flag_names(parser)
    engine: dict[str, Any] = {}
    frontend: dict[str, Any] = {}
    corrigo: dict[str, Any] = {}
    for name, value in given.items():
        flag = flags.get(name, name)
        if name in REFUSED:
            raise FrontendConfigError(f"{flag} is not supported by corrigo: {REFUSED[name]}")
        if name in ALWAYS_ON:
            if value is not True:
                raise FrontendConfigError(f"--no-{flag[2:]} cannot be honoured: {ALWAYS_ON[name]}")
        elif name in CORRIGO_KEYS:
            corrigo[CORRIGO_KEYS[name]] = value
        elif name in RESERVED_ENGINE_ARGS:
            raise FrontendConfigError(f"{flag} is set by corrigo ({RESERVED_ENGINE_ARGS[name]})")
        elif name in ENGINE_KEYS:
            engine[name] = value
        elif name in FRONTEND_KEYS:
            frontend[name] = _config_value(value)
        else:  # vLLM's --config (YAML): corrigo's own --config takes the flag first
            raise FrontendConfigError(f"{flag} is not supported by corrigo")
    return ServeFlags(engine=engine, frontend=frontend, corrigo=corrigo)


def frontend_namespace(frontend: Mapping[str, Any], engine: AsyncEngineArgs) -> argparse.Namespace:
    """The namespace vLLM's serving classes are built from (``init_app_state``): vLLM's
    defaults, the ``[frontend]`` settings parsed by vLLM's parser, and the engine's arguments,
    checked as ``vllm serve`` checks its flags before starting (a tool-call parser for
    ``enable_auto_tool_choice``, known parser names, a valid chat template...). Registers the
    parser plugins named. :class:`FrontendConfigError` names the key at fault."""
    check_frontend_keys(frontend)
    parser = serve_parser()
    try:
        args = parser.parse_args(frontend_argv(frontend, parser))
    except ServeArgsError as exc:
        raise FrontendConfigError(f"[frontend] rejected by vLLM: {exc}") from None
    for name in ENGINE_KEYS:
        setattr(args, name, getattr(engine, name))
    # vLLM's own step from --reasoning-parser to the config its renderers read (it is what
    # the engine does to the same object when it builds its config).
    args.structured_outputs_config = engine.create_structured_outputs_config()
    try:
        import_parser_plugins(args)
        validate_parsed_serve_args(args)
        validate_api_server_args(args)
    except Exception as exc:  # vLLM raises TypeError, ValueError, KeyError and its own
        message = exc.args[0] if exc.args else str(exc)
        raise FrontendConfigError(
            f"vLLM rejects the [frontend]/[engine] settings: {message}"
        ) from None
    return args


def check_frontend_keys(frontend: Mapping[str, Any]) -> None:
    """Every ``[frontend]`` key is a vLLM front-end setting corrigo hands to vLLM; the
    message says where a misplaced one belongs."""
    for key, value in frontend.items():
        if key in FRONTEND_KEYS:
            continue
        if key in ALWAYS_ON:
            if value is not True:
                raise FrontendConfigError(f"frontend.{key} cannot be turned off: {ALWAYS_ON[key]}")
            continue
        if key in CORRIGO_KEYS:
            where = CORRIGO_KEYS[key]
            section, _, name = where.partition(".")
            raise FrontendConfigError(
                f"frontend.{key} is a corrigo setting: use [{section}] {name}"
            )
        if key in REFUSED:
            raise FrontendConfigError(f"frontend.{key} is not supported by corrigo: {REFUSED[key]}")
        if key in ENGINE_KEYS:
            raise FrontendConfigError(
                f"frontend.{key} is a vLLM engine argument: put it in [engine]"
            )
        raise FrontendConfigError(
            f"frontend.{key} is not a vLLM front-end setting (`vllm serve --help` lists them; "
            "the key is the flag's name with underscores, e.g. tool_call_parser)"
        )


def frontend_argv(frontend: Mapping[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    """``[frontend]`` as the ``vllm serve`` flags that set it, for vLLM's parser to read:
    booleans as ``--flag``/``--no-flag``, lists as several values, tables as JSON."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for key, value in frontend.items():
        action = actions[key]
        flag = _long(action)
        if action.nargs == 0:  # --flag / --no-flag
            if not isinstance(value, bool):
                raise FrontendConfigError(f"frontend.{key} must be true or false")
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            if not items:
                raise FrontendConfigError(f"frontend.{key} is an empty list")
            argv += [flag, *(_flag_text(key, item) for item in items)]
        else:
            argv.append(f"{flag}={_flag_text(key, value)}")
    return argv


def _flag_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        raise FrontendConfigError(f"frontend.{key} is not a true/false setting")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _config_value(value: Any) -> Any:
    """A parsed flag value as a TOML value (``--lora-modules`` gives vLLM dataclasses)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, list):
        return [_config_value(v) for v in value]
    return value


def _long(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    names = {a.dest: _long(a) for a in parser._actions if a.option_strings}
    names["model_tag"] = "MODEL"
    return names
