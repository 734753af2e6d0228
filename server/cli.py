"""The ``corrigo`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config

#: `corrigo eval NAME` runs evals/NAME.py (its add_parser() and run()).
EVALS = ("unlearning", "refinement")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corrigo",
        description="An OpenAI-compatible server that applies decoding-time corrections on top of vLLM.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a model over the OpenAI API",
        description=(
            "Serve a model over the OpenAI API. Settings come from built-in defaults, then "
            "--config FILE, then these flags, then CORRIGO_* environment variables "
            "(CORRIGO_HOST, CORRIGO_PORT, CORRIGO_MODEL, CORRIGO_SERVED_MODEL_NAME, "
            "CORRIGO_API_KEYS, CORRIGO_CONFIG, or CORRIGO_<SECTION>__<KEY> for any config key, "
            "e.g. CORRIGO_ENGINE__MAX_MODEL_LEN=4096)."
        ),
    )
    serve.add_argument(
        "--config", metavar="FILE", help="TOML config file (see README: Configuration)"
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument(
        "--model",
        metavar="PATH",
        help="HF-format model folder to serve (default: the embedded SmolLM2-135M-Instruct)",
    )
    serve.add_argument(
        "--served-model-name",
        metavar="ID",
        help="model id clients use (default: the model folder's name, or smollm2-135m-instruct)",
    )
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info)",
    )
    evaluate = commands.add_parser("eval", help="run an evaluation against a corrigo server")
    evals = evaluate.add_subparsers(dest="eval", required=True, metavar="EVAL")
    for name in EVALS:
        importlib.import_module(f"evals.{name}").add_parser(evals)
    return parser


#: CLI flag -> dotted config key.
FLAG_KEYS = {
    "host": "server.host",
    "port": "server.port",
    "model": "model.path",
    "served_model_name": "model.served_model_name",
    "log_level": "server.log_level",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "eval":
        return importlib.import_module(f"evals.{args.eval}").run(args)
    raise AssertionError(args.command)


def serve(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag) is not None
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"corrigo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    import uvicorn

    from adapters.aux_models import AuxModelError
    from adapters.default_model import DefaultModelError
    from adapters.engine import EngineConfigError, check_engine_args, resolve_model
    from adapters.verifier_plugins import VerifierPluginError
    from decoding.unlearning import ForgetSetError

    from .app import create_app
    from .profiles import ProfileError

    try:
        model = resolve_model(config.model.path, config.model.served_model_name)
        app = create_app(config, model)
        check_engine_args(app.state.runtime.args)
    except (
        DefaultModelError,
        EngineConfigError,
        AuxModelError,
        ProfileError,
        ForgetSetError,
        VerifierPluginError,
    ) as exc:
        print(f"corrigo: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            log_level=config.server.log_level,
            timeout_graceful_shutdown=config.server.graceful_shutdown_seconds,
        )
    )
    runtime = app.state.runtime

    def stop_server() -> None:
        server.should_exit = True

    runtime.on_fatal = stop_server
    server.run()
    if runtime.failure is not None:
        print(f"corrigo: the engine failed to start: {runtime.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
