"""The ``corrigo`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.aux_models import AuxModelError
from adapters.default_model import DefaultModelError
from decoding.copilot.params import SPACES

from .auth import keyless_exposure_warning
from .config import ConfigError, ServerConfig, load_config
from .refinement.remote_model import JudgeConfigError
from .refinement.verifier_plugins import VerifierPluginError

#: `corrigo eval NAME` runs evals/NAME.py, dashes as underscores (its add_parser() and run()).
EVALS = ("unlearning", "refinement", "copilot", "proxy-tuning")


def eval_module(name: str) -> str:
    return f"evals.{name.replace('-', '_')}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corrigo",
        description="An OpenAI-compatible server that applies decoding-time corrections on top of vLLM.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a model over the OpenAI API",
        usage="corrigo serve [MODEL] [options] [vLLM serve flags]",
        description=(
            "Serve a model over the OpenAI API. Settings come from built-in defaults, then "
            "--config FILE, then these flags, then CORRIGO_* environment variables "
            "(CORRIGO_HOST, CORRIGO_PORT, CORRIGO_MODEL, CORRIGO_SERVED_MODEL_NAME, "
            "CORRIGO_API_KEYS, CORRIGO_CONFIG, or CORRIGO_<SECTION>__<KEY> for any config key, "
            "e.g. CORRIGO_ENGINE__MAX_MODEL_LEN=4096)."
        ),
        epilog=(
            "Every `vllm serve` flag is accepted too, parsed by vLLM's own parser (see "
            "`vllm serve --help`): engine flags (--max-model-len, --enable-lora, "
            "--reasoning-parser...) set [engine] keys, front-end flags (--tool-call-parser, "
            "--chat-template, --lora-modules...) set [frontend] keys; MODEL works as --model. "
            "Server flags corrigo cannot honour (--ssl-*, --middleware, --headless...) are "
            "refused with the reason (README: Configuration)."
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
        nargs="+",  # as vLLM's flag: several ids are then refused with a reason, not misread
        help="model id clients use (default: the model folder's name, or smollm2-135m-instruct)",
    )
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info)",
    )
    _add_copilot_commands(commands)
    _add_unlearning_commands(commands)
    evaluate = commands.add_parser("eval", help="run an evaluation against a corrigo server")
    evals = evaluate.add_subparsers(dest="eval", required=True, metavar="EVAL")
    for name in EVALS:
        importlib.import_module(eval_module(name)).add_parser(evals)
    return parser


def _add_unlearning_commands(commands) -> None:
    unlearning = commands.add_parser(
        "unlearning", help="fit a forget set's trained gate (see README: Guarded unlearning)"
    )
    sub = unlearning.add_subparsers(dest="unlearning_command", required=True, metavar="COMMAND")
    fit = sub.add_parser(
        "fit-gate",
        help="train the gate classifier of a forget set and save it beside the set",
        description=(
            "Train a small classifier on MiniLM embeddings (the set's questions, answers and "
            "templated paraphrases as positives; the --retain and --near prompts as negatives), "
            "choose its threshold on a held-out split, and save it as SET.gate.pt beside the "
            "forget set, where 'corrigo serve' uses it (decoding/unlearning/fit_gate.py)."
        ),
    )
    fit.add_argument("--forget", required=True, type=Path, metavar="SET.jsonl")
    fit.add_argument(
        "--retain",
        required=True,
        type=Path,
        metavar="FILE",
        help="prompts the gate must pass (JSONL with question or prompt, or one per line)",
    )
    fit.add_argument(
        "--near", type=Path, action="append", default=[], metavar="FILE", help="more negatives"
    )
    fit.add_argument("--seed", type=int, default=0)


def _add_copilot_commands(commands) -> None:
    copilot = commands.add_parser("copilot", help="train copilots (see README: Copilots)")
    sub = copilot.add_subparsers(dest="copilot_command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="log a pilot's mistakes over a data set and train a copilot on them",
        description=(
            "Run the pilot with teacher forcing over prompt/response pairs (JSONL lines "
            '{"prompt": ..., "response": ...}, prompts rendered by the chat template as the '
            "server renders them), record its mistake log, train a copilot on it and save a "
            "checkpoint bound to the pilot in --out. With --joint, fine-tune the pilot for "
            "--pilot-epochs rounds, logging its mistakes under its weights at every round, "
            "save it in --out/pilot and bind the copilot to it (--out/serve.toml serves them "
            "together). Rerun the same command to resume."
        ),
    )
    train.add_argument("--pilot", required=True, help='pilot model folder, or "embedded"')
    train.add_argument("--data", required=True, type=Path, metavar="FILE.jsonl")
    train.add_argument("--out", required=True, type=Path, metavar="DIR")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument(
        "--device", default="auto", help="torch device (default auto: cuda if available, else cpu)"
    )
    train.add_argument("--top-k", type=int, default=32, help="pilot tokens logged per position")
    train.add_argument("--hidden-size", type=int, default=128)
    train.add_argument("--layers", type=int, default=2)
    train.add_argument(
        "--space", choices=SPACES, default="probs", help="default fusion space (default probs)"
    )
    train.add_argument(
        "--lambda", dest="default_lambda", type=float, default=1.0, help="default fusion weight"
    )
    train.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    train.add_argument("--seed", type=int, default=0)
    joint = train.add_argument_group("joint training (Transformer Copilot's Alg. 1)")
    joint.add_argument(
        "--joint", action="store_true", help="fine-tune the pilot too; log it at every round"
    )
    joint.add_argument("--pilot-epochs", type=int, default=3, help="fine-tuning rounds")
    joint.add_argument("--pilot-lr", type=float, default=2e-5, help="pilot learning rate")
    joint.add_argument("--pilot-batch-size", type=int, default=8)


#: CLI flag -> dotted config key.
FLAG_KEYS = {
    "host": "server.host",
    "port": "server.port",
    "model": "model.path",
    "served_model_name": "model.served_model_name",
    "log_level": "server.log_level",
}


def parse_command_line(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """corrigo's own flags, and what is left of a ``serve`` command line for vLLM's parser
    (its flags and MODEL; adapters/frontend.py). Other commands take no foreign flags."""
    parser = build_parser()
    args, rest = parser.parse_known_args(_dashed(argv))
    if rest and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse_command_line(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        return serve(args, rest)
    if args.command == "copilot":
        return copilot_train(args)
    if args.command == "unlearning":
        return fit_gate(args)
    if args.command == "eval":
        return importlib.import_module(eval_module(args.eval)).run(args)
    raise AssertionError(args.command)


def copilot_train(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adapters.copilot_joint import JointSettings, train_joint
    from adapters.copilot_training import TrainingError, TrainSettings, train

    settings = TrainSettings(
        top_k=args.top_k,
        hidden_size=args.hidden_size,
        layers=args.layers,
        lr=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        save_every=args.save_every,
        seed=args.seed,
        space=args.space,
        default_lambda=args.default_lambda,
        device=args.device,
    )
    if args.joint:
        joint = JointSettings(args.pilot_epochs, args.pilot_lr, args.pilot_batch_size)
        steps = train_joint(args.pilot, args.data, args.out, settings, joint)
    else:
        steps = train(args.pilot, args.data, args.out, settings)
    try:
        for _ in steps:
            pass
    except (TrainingError, OSError) as exc:
        print(f"corrigo: {exc}", file=sys.stderr)
        return 2
    print(f"corrigo: copilot saved in {args.out}")
    if args.joint:
        print(f"corrigo: fine-tuned pilot in {args.out / 'pilot'}; serve both with:")
        print((args.out / "serve.toml").read_text(), end="")
    return 0


def fit_gate(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from decoding.unlearning import ForgetSetError
    from decoding.unlearning.embeddings import minilm
    from decoding.unlearning.fit_gate import fit_files

    try:
        result = fit_files(args.forget, [args.retain, *args.near], minilm(), args.seed)
    except ForgetSetError as exc:
        print(f"corrigo: {exc}", file=sys.stderr)
        return 2
    v = result.validation
    false_open = "n/a" if v["false_open"] is None else f"{100 * v['false_open']:.1f}%"
    print(
        f"corrigo: gate saved in {result.path} (threshold {result.threshold:.4f}; held out: "
        f"recall {100 * v['recall']:.1f}% of {v['positives']} forget prompts, false opens "
        f"{false_open} of {v['negatives']} others)"
    )
    return 0


def _dashed(argv: Sequence[str]) -> list[str]:
    """``--flag_name`` spelt ``--flag-name``, as vLLM's parser accepts both."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def serve_overrides(args: argparse.Namespace, vllm_argv: Sequence[str]) -> dict[str, Any]:
    """The dotted config keys the command line sets: corrigo's flags, then the ``vllm serve``
    flags sorted by adapters/frontend.py (only those given). Raises ConfigError for a flag
    vLLM's parser rejects or corrigo refuses, and for one given twice over."""
    if args.served_model_name is not None and len(args.served_model_name) > 1:
        raise ConfigError(
            f"--served-model-name: corrigo serves one model id, got {args.served_model_name}; "
            "offer more names as [profiles] (README: Profiles)"
        )
    overrides = {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag) is not None
    }
    if "model.served_model_name" in overrides:
        overrides["model.served_model_name"] = overrides["model.served_model_name"][0]
    if not vllm_argv:
        return overrides
    from adapters.frontend import FrontendConfigError, parse_serve_flags  # imports vLLM

    try:
        flags = parse_serve_flags(vllm_argv).overrides()
    except FrontendConfigError as exc:
        raise ConfigError(str(exc)) from None
    clash = sorted(flags.keys() & overrides.keys())
    if clash:
        raise ConfigError(f"the command line sets {clash[0]} twice (MODEL and --model?)")
    return {**overrides, **flags}


def serve(args: argparse.Namespace, vllm_argv: Sequence[str] = ()) -> int:
    try:
        config = load_config(args.config, serve_overrides(args, vllm_argv))
    except ConfigError as exc:
        print(f"corrigo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    exposure = keyless_exposure_warning(config.server.host, config.auth.api_keys)
    if exposure is not None:
        logging.getLogger("corrigo").warning(exposure)
        print(f"corrigo: WARNING: {exposure}", file=sys.stderr)

    # These import vLLM or torch (seconds): `corrigo --help`, `corrigo eval` and the other
    # commands start without them.
    import uvicorn

    from adapters.aux_budget import AuxMemoryError, check_aux_memory
    from adapters.engine import EngineConfigError, check_engine_args, resolve_model
    from adapters.engine_channel import ChannelError
    from adapters.frontend import FrontendConfigError
    from decoding.copilot.runner import CopilotConfigError
    from decoding.unlearning import ForgetSetError

    from .app import create_app
    from .deployment import aux_declared
    from .profiles import ProfileError

    try:
        model = resolve_model(config.model.path, config.model.served_model_name)
        app = create_app(config, model)
        args = app.state.runtime.args
        engine_config = check_engine_args(args)
        budget = config.aux_memory.budget_bytes
        logging.getLogger("corrigo").info(
            check_aux_memory(
                aux_declared(args.additional_config), engine_config, model.path, budget
            )
        )
    except (
        DefaultModelError,
        EngineConfigError,
        FrontendConfigError,
        AuxModelError,
        AuxMemoryError,
        CopilotConfigError,
        ProfileError,
        ForgetSetError,
        VerifierPluginError,
        JudgeConfigError,
        ChannelError,
        ConfigError,
    ) as exc:
        print(f"corrigo: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(uvicorn_config(app, config.server))
    runtime = app.state.runtime

    def stop_server() -> None:
        server.should_exit = True

    runtime.on_fatal = stop_server
    server.run()
    if runtime.failure is not None:
        print(f"corrigo: the engine failed to start: {runtime.failure}", file=sys.stderr)
        return 1
    return 0


def uvicorn_config(app, settings: ServerConfig):
    """uvicorn's settings for ``corrigo serve``."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )


if __name__ == "__main__":
    sys.exit(main())
