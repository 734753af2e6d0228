"""corrigo's configuration: one TOML file, overridden by CLI flags, overridden by environment.

Precedence, lowest first: built-in defaults < ``--config FILE`` < CLI flags < ``CORRIGO_*``
environment variables. Environment names:

- ``CORRIGO_CONFIG``, ``CORRIGO_HOST``, ``CORRIGO_PORT``, ``CORRIGO_MODEL``,
  ``CORRIGO_SERVED_MODEL_NAME``, ``CORRIGO_API_KEYS`` (comma-separated) — the common ones;
- ``CORRIGO_<SECTION>__<KEY>`` for any other key, e.g. ``CORRIGO_ENGINE__MAX_MODEL_LEN=4096`` or
  ``CORRIGO_LIMITS__MAX_N=4``. Values are read as TOML literals when they parse as one
  (``4096``, ``true``, ``["a", "b"]``), otherwise as plain strings.
"""

from __future__ import annotations

import ipaddress
import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from decoding.aux.dtypes import AuxDType
from decoding.refinement.params import BudgetCaps
from decoding.refinement.urls import URLError, parse_prefix, parse_url
from decoding.refinement.verifier import TreeLimits
from decoding.unlearning.policy import (
    DEFAULT_ABSTENTION,
    DEFAULT_ON_MATCH,
    DEFAULT_REFUSAL,
    OnMatch,
)

from .refinement.sandbox.runner import DEFAULT_UID_BASE, CgroupMode, Isolation

logger = logging.getLogger(__name__)

ENV_PREFIX = "CORRIGO_"

#: Shorthand environment variables -> dotted config keys.
ENV_SHORTCUTS: dict[str, str] = {
    "CORRIGO_HOST": "server.host",
    "CORRIGO_PORT": "server.port",
    "CORRIGO_MODEL": "model.path",
    "CORRIGO_SERVED_MODEL_NAME": "model.served_model_name",
    "CORRIGO_API_KEYS": "auth.api_keys",
}
#: Environment variables that are not config keys.
ENV_RESERVED = {"CORRIGO_CONFIG", "CORRIGO_CACHE_DIR", "CORRIGO_VENV"}


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and the source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _url_prefix(text: str) -> str:
    try:
        return str(parse_prefix(text))
    except URLError as exc:
        raise ValueError(f"{text!r} is not an allowed-URL entry: {exc}") from None


def _judge_url(text: str) -> str:
    try:
        return str(parse_url(text))
    except URLError as exc:
        raise ValueError(f"{text!r} is not a judge URL: {exc}") from None


def _trusted_host(text: str) -> str:
    host = text.strip().lower().removeprefix("[").removesuffix("]")
    if ":" in host:  # only an IPv6 address; "name:port" would never match a Host header
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            pass
    elif host and host.isascii() and all(c.isalnum() or c in ".-_" for c in host):
        return host
    raise ValueError(f"{text!r} is not a host name or address (no scheme, port or path)")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    #: Seconds SIGTERM waits for in-flight requests before aborting them.
    graceful_shutdown_seconds: float = Field(10.0, ge=0)
    #: Host names (or addresses) clients reach this server by; when set, a request whose
    #: ``Host`` header names another host is refused (400) — a web page on another origin,
    #: DNS-rebound to this address, is then turned away. /health answers any host. None: any.
    trusted_hosts: list[Annotated[str, AfterValidator(_trusted_host)]] | None = None
    #: Addresses of reverse proxies whose ``X-Forwarded-For``/``X-Forwarded-Proto`` headers
    #: are believed (the client address rate limits and logs use). Empty: none, the client
    #: address is the connection's peer (uvicorn's own default would trust 127.0.0.1, letting
    #: any local process pick the address it is rate-limited as).
    forwarded_allow_ips: list[str] = Field(default_factory=list)
    #: IP address of this host where the engine sends per-step figures (request reports,
    #: plugin step times; adapters/engine_channel.py). Loopback serves engines on this host;
    #: with Ray workers on other nodes, an address of this host they can reach.
    report_host: str = "127.0.0.1"
    #: Its TCP port; 0: any free port (set one to open it in a firewall).
    report_port: int = Field(0, ge=0, le=65535)


class ModelConfig(_Section):
    #: HF-format model folder (or hub id on machines that may reach a hub). None: the embedded
    #: SmolLM2-135M-Instruct.
    path: str | None = None
    #: Model id clients use; default: the folder's name (or ``smollm2-135m-instruct``).
    served_model_name: str | None = None
    #: Whether clients may name the served model itself. False: only profiles are listed in
    #: /v1/models and accepted as ``model`` (the served id is a 404, as an unknown model), so
    #: a profile's enforced corrections cannot be stepped around (server/profiles.py).
    public: bool = True


class AuthConfig(_Section):
    #: When non-empty, every /v1 route requires ``Authorization: Bearer <one of these>``.
    api_keys: list[str] = Field(default_factory=list)


class LimitsConfig(_Section):
    #: Largest request body accepted, in bytes (413 beyond).
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0)
    #: Cap on ``max_tokens`` / ``max_completion_tokens`` (400 beyond); None: the context length.
    max_tokens: int | None = Field(None, gt=0)
    #: Cap on ``n`` (400 beyond).
    max_n: int = Field(16, gt=0)
    #: Cap on the number of chat ``messages`` and of Responses ``input`` items (400 beyond).
    max_messages: int = Field(1024, gt=0)
    #: Cap on the size of a request's ``correction`` object, as compact JSON bytes (400 beyond).
    max_correction_bytes: int = Field(256 * 1024, gt=0)
    #: Generation requests served at once; more wait in line (server/admission.py). None: no
    #: limit (vLLM then queues without bound).
    max_running_requests: int | None = Field(256, gt=0)
    #: Requests that may wait for a running slot; beyond, 429 with ``Retry-After``.
    max_waiting_requests: int = Field(1024, ge=0)
    #: Deepest nesting of arrays and objects in a request body (400 beyond).
    max_json_depth: int = Field(64, ge=8)
    #: Most JSON values in a request body (413 beyond), bounded before parsing by counting its
    #: commas and opening brackets (those inside strings count too). Parsing holds the event
    #: loop and its cost grows with the number of values, not bytes: 200,000 small values
    #: parse in about 25 ms on 2 cores, 4 MB of text in one string in about 6 ms. The default
    #: fits a 128k-token prompt given as token ids.
    max_json_values: int = Field(200_000, gt=0)
    #: Most prompts in one /v1/completions request (each is generated ``n`` times).
    max_prompts: int = Field(64, gt=0)
    #: Per API key (per client address without keys): requests a minute; None: no rate limit.
    requests_per_minute: int | None = Field(None, gt=0)
    #: Requests one key may send in a burst above the steady rate; None: ``requests_per_minute``.
    rate_limit_burst: int | None = Field(None, gt=0)
    #: Characters of text the unlearning gate reads in one request (every message, part and
    #: prompt together); a gated request carrying more is refused (400), never gated in part.
    max_gate_chars: int = Field(8 * 1024, gt=0)
    #: Pieces (messages, sentences, windows of long sentences) the gate embeds for one
    #: request; a gated request that splits into more is refused (400).
    max_gate_pieces: int = Field(512, gt=0)
    #: Pieces whose embeddings the unlearning gate keeps for later requests that repeat them
    #: (a system prompt, earlier chat turns), least recently used dropped first; 0 (default):
    #: none kept. A kept piece is gated faster, which a client timing its requests can see:
    #: set it only where every client may learn which texts the others sent
    #: (decoding/unlearning/piece_cache.py; docs/security.md).
    gate_cache_pieces: int = Field(0, ge=0)


class AuxModelConfig(_Section):
    #: HF-format folder of a model sharing the served model's tokenizer, or "embedded" for the
    #: embedded SmolLM2's converted folder.
    path: str
    #: What it runs in: "auto" (the engine's dtype on a GPU; on the CPU bf16 only where the
    #: engine runs bf16 on a CPU that computes it natively, else float32), "float32",
    #: "bfloat16" or "float16".
    dtype: AuxDType = "auto"
    #: The format it sees chat requests in under proxy-tuning (decoding/proxy_tuning/prompts.py):
    #: unset, the served model's rendering; "chat", its own tokenizer's chat template; "base",
    #: the messages' text without a template; else the path of a Jinja chat template file.
    chat_template: str | None = Field(None, min_length=1)


class ForgetSetConfig(_Section):
    #: JSONL file: one ``{"question", "answer"}`` and/or ``{"phrases": [...]}`` object a line.
    #: Refused at start-up when other users may read or write it (chmod 600 or 640).
    path: str
    #: Gate threshold for requests that send none.
    threshold: float = Field(0.5, ge=0, le=1)
    #: The range a request's own ``threshold`` must lie in (400 outside); default: the
    #: ``threshold`` itself, i.e. clients cannot move it. A higher threshold turns the gate off;
    #: with any range, bisecting the threshold on the reported decision measures the score.
    min_threshold: float | None = Field(None, ge=0, le=1)
    max_threshold: float | None = Field(None, ge=0, le=1)
    #: Reports carry the gate's score, threshold, entries retrieved and token counts (a
    #: similarity oracle for clients); default: the decision only.
    report_detail: bool = False
    #: Whether the set's name may appear in errors, metric labels and reports. Without it (or
    #: an ``alias``) they say ``undisclosed``.
    public_name: bool = False
    #: The label errors, metrics and reports use instead of the name.
    alias: str | None = Field(None, min_length=1, max_length=64)
    #: What an open gate does (decoding/unlearning/policy.py): "steer" (generate under the
    #: filters), "abstain" (force ``abstention`` at the first blocked token) or "refuse" (no
    #: generation: ``refusal`` with finish_reason "content_filter"). Profiles and requests may
    #: only make it stricter (steer < abstain < refuse).
    on_match: OnMatch = DEFAULT_ON_MATCH
    #: The response under "refuse" (every choice's content).
    refusal: str = Field(DEFAULT_REFUSAL, min_length=1, max_length=1000)
    #: The phrase forced under "abstain", in the served model's tokens.
    abstention: str = Field(DEFAULT_ABSTENTION, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _threshold_within_bounds(self) -> ForgetSetConfig:
        low = self.threshold if self.min_threshold is None else self.min_threshold
        high = self.threshold if self.max_threshold is None else self.max_threshold
        if not low <= self.threshold <= high:
            raise ValueError(
                f"need min_threshold <= threshold <= max_threshold, got {low}, "
                f"{self.threshold}, {high}"
            )
        if self.public_name and self.alias is not None:
            raise ValueError("set public_name or alias, not both")
        for name in ("refusal", "abstention"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} is blank")
        return self


class CopilotConfig(_Section):
    #: Folder written by ``corrigo copilot train`` (refused at start-up unless bound to the
    #: served model).
    path: str
    #: What it runs in (as for auxiliary models; the weights are saved in float32).
    dtype: AuxDType = "auto"


class AuxMemoryConfig(_Section):
    """Memory for the auxiliary models and copilots beside the engine (docs/deployment.md,
    "Memory budgeting for auxiliary models"). corrigo refuses to start when their estimated
    peak does not fit."""

    #: Bytes they may use beyond what vLLM counts as its own, on each GPU (on the CPU: on this
    #: host). None: derived from ``[engine]`` (``gpu_memory_utilization``, or the CPU's
    #: available memory). Needed where corrigo cannot see the engine's devices (Ray workers on
    #: other nodes, ``kv_cache_memory_bytes`` on a GPU).
    budget_bytes: int | None = Field(None, gt=0)


class ProfileConfig(_Section):
    #: The model the profile runs on (default and only choice today: the served model).
    model: str | None = None
    #: The default ``correction`` object; a request's own ``correction`` is laid over it.
    correction: dict[str, Any] = Field(default_factory=dict)
    #: Corrections of the profile a request may not touch (a request naming one is a 400):
    #: true for all of them, or a list of keys of ``correction``.
    enforce: bool | list[str] = False


class RefinementConfig(_Section):
    #: Cap on a request's ``correction.refinement.max_rounds`` (400 beyond).
    max_rounds: int = Field(8, ge=1, le=64)
    #: Where requests may send verifications (webhook, judge ``url``): entries
    #: ``scheme://host[:port][/path]`` (port ``*`` or empty: any port), matched by parsed scheme,
    #: host, port and path segments (decoding/refinement/urls.py); empty: nowhere.
    url_prefixes: list[Annotated[str, AfterValidator(_url_prefix)]] = Field(default_factory=list)
    #: Streaming: seconds between SSE keep-alive comments while the rounds run.
    keepalive_seconds: float = Field(5.0, gt=0)
    #: Caps on one verifier tree: its parts, its depth (a lone verifier is 1), and its costly
    #: parts (p_true, judge, webhook, python_tests, custom types). 400 beyond.
    max_verifier_nodes: int = Field(TreeLimits.nodes, ge=1)
    max_verifier_depth: int = Field(TreeLimits.depth, ge=1, le=16)
    max_costly_verifiers: int = Field(TreeLimits.costly, ge=0)
    #: Maximums of a request's refinement budget (a request may ask less, not more: 400). When
    #: one runs out the loop stops with its ``stop_reason``. Engine calls: generated sequences
    #: plus verifier forwards on the engine.
    max_engine_calls: int = Field(BudgetCaps.max_engine_calls, ge=1)
    #: Wall seconds of sandboxed verifiers (python_tests) per request.
    max_sandbox_seconds: float = Field(BudgetCaps.max_sandbox_seconds, gt=0)
    #: Wall seconds of the whole refinement loop per request.
    max_seconds: float = Field(BudgetCaps.max_seconds, gt=0)


class SandboxConfig(_Section):
    """The python_tests sandbox (server/refinement/sandbox/runner.py). Probed at start-up; when
    the host cannot give the configured isolation, python_tests is refused (400), never run
    weaker."""

    #: false: python_tests is refused.
    enabled: bool = True
    #: "namespaces" (a minimal root, no network, own PID namespace) or, explicitly only,
    #: "limits-only" (rlimits, own uid and seccomp; the host's files and processes in view).
    isolation: Isolation = "namespaces"
    #: A cgroup per run for memory/pids/CPU of the whole tree: "auto" (where the host allows;
    #: else per-process limits, logged), "required" (refuse python_tests without), "off".
    cgroups: CgroupMode = "auto"
    #: First of the ``max_concurrent`` uids (and gids) the slots run as when the server is root.
    uid_base: int = Field(DEFAULT_UID_BASE, ge=1000, le=4_000_000_000)
    #: Sandboxes running at once, each in a slot with its own uid.
    max_concurrent: int = Field(4, ge=1, le=256)


class JudgeConfig(_Section):
    """A model requests may name as their judge (``{"type": "judge", "judge": NAME}``)."""

    #: Its OpenAI-compatible base URL (ending in ``/v1``); not subject to ``url_prefixes``.
    url: Annotated[str, AfterValidator(_judge_url)]
    #: The model name sent there.
    model: str | None = None
    #: The environment variable holding its API key (checked at start-up); None: no key.
    api_key_env: str | None = None


class VerifierConfig(_Section):
    #: Name of the entry point (group ``corrigo.verifiers``) implementing it; default: the
    #: verifier's own name.
    entry_point: str | None = None
    #: Server-side options passed to the verifier's constructor.
    options: dict[str, Any] = Field(default_factory=dict)


class CorrectionsConfig(_Section):
    #: The operator's own per-step corrections, ``"package.module:OBJECT"`` each naming a
    #: ``decoding.contract.Correction``; they run after the built-ins' logit shifts and before
    #: unlearning's blocks, in this order (decoding/registry.py). Every engine process imports
    #: them too.
    extra: list[str] = Field(default_factory=list)


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    #: Passed through to vLLM's ``AsyncEngineArgs`` and validated by it (adapters/engine.py).
    engine: dict[str, Any] = Field(default_factory=dict)
    #: vLLM's front-end settings (``vllm serve`` flags read by its serving classes: the
    #: flag's argparse name, e.g. ``tool_call_parser``), parsed and checked by vLLM's parser
    #: (adapters/frontend.py).
    frontend: dict[str, Any] = Field(default_factory=dict)
    #: Auxiliary models (proxy-tuning experts and anti-experts), by the name requests use.
    aux_models: dict[str, AuxModelConfig] = Field(default_factory=dict)
    #: Forget sets for the ``unlearning`` correction, by the name requests use.
    forget_sets: dict[str, ForgetSetConfig] = Field(default_factory=dict)
    #: Copilots (trained by ``corrigo copilot train``), by the name requests use.
    copilots: dict[str, CopilotConfig] = Field(default_factory=dict)
    aux_memory: AuxMemoryConfig = Field(default_factory=AuxMemoryConfig)
    corrections: CorrectionsConfig = Field(default_factory=CorrectionsConfig)
    #: Named bundles of a model and a default correction, listed in /v1/models and selectable
    #: as ``model`` by clients that cannot send extra body fields.
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    refinement: RefinementConfig = Field(default_factory=RefinementConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    #: Custom refinement verifiers, by the ``type`` requests use (loaded from entry points).
    verifiers: dict[str, VerifierConfig] = Field(default_factory=dict)
    #: Remote judges for the ``judge`` verifier, by the name requests use.
    judges: dict[str, JudgeConfig] = Field(default_factory=dict)


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration.

    ``overrides`` maps dotted keys to values (the CLI flags that were given); ``environ`` is
    the process environment (``os.environ`` unless given).
    """
    import os

    environ = os.environ if environ is None else environ
    path = environ.get("CORRIGO_CONFIG") or path
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        layers.append((f"config file {path}", _read_toml(Path(path))))
    if overrides:
        layers.append(("command line", _nest(overrides)))
    layers.append(("environment", _nest(_from_environ(environ))))

    merged: dict[str, Any] = {}
    for _, layer in layers:
        _deep_merge(merged, layer)
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        sources = [name for name, layer in layers if _has_key(layer, err["loc"])]
        where = f" (from {sources[-1]})" if sources else ""
        raise ConfigError(f"config key '{key}'{where}: {err['msg']}") from None
    for name, judge in config.judges.items():
        if judge.api_key_env is not None and not environ.get(judge.api_key_env):
            raise ConfigError(
                f"config key 'judges.{name}.api_key_env': the judge '{name}' takes its key "
                f"from the environment variable {judge.api_key_env}, which is not set (or empty)"
            )
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        if name in ENV_SHORTCUTS:
            key = ENV_SHORTCUTS[name]
        elif "__" in name:
            key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        else:
            logger.warning(
                "ignoring environment variable %s: corrigo reads %s and %s<SECTION>__<KEY>",
                name,
                ", ".join(sorted(ENV_SHORTCUTS)),
                ENV_PREFIX,
            )
            continue
        if key == "auth.api_keys":
            out[key] = [k.strip() for k in raw.split(",") if k.strip()]
        else:
            out[key] = _parse_env_value(raw)
    return out


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _has_key(layer: Mapping[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = layer
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
