from pathlib import Path

import pytest

from server.cli import FLAG_KEYS, build_parser
from server.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "corrigo.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source():
    config = load_config(None, None, environ={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.model.path is None  # the embedded default model
    assert config.auth.api_keys == []
    assert config.engine == {}


def test_file_then_cli_then_environment(tmp_path):
    path = write(
        tmp_path,
        """
[server]
host = "0.0.0.0"
port = 9000
[model]
path = "/models/from-file"
[engine]
max_model_len = 1024
tensor_parallel_size = 2
""",
    )
    config = load_config(path, {"server.port": 9100, "model.path": "/models/from-cli"}, environ={})
    assert config.server.host == "0.0.0.0"  # file only
    assert config.server.port == 9100  # CLI beats file
    assert config.model.path == "/models/from-cli"

    env = {"CORRIGO_PORT": "9200", "CORRIGO_ENGINE__MAX_MODEL_LEN": "4096"}
    config = load_config(path, {"server.port": 9100}, environ=env)
    assert config.server.port == 9200  # environment beats CLI
    assert config.engine == {"max_model_len": 4096, "tensor_parallel_size": 2}


def test_environment_shortcuts_and_literals(tmp_path):
    env = {
        "CORRIGO_HOST": "::1",
        "CORRIGO_MODEL": "/m",
        "CORRIGO_SERVED_MODEL_NAME": "mine",
        "CORRIGO_API_KEYS": "k1, k2,",
        "CORRIGO_ENGINE__ENFORCE_EAGER": "true",
        "CORRIGO_ENGINE__DISTRIBUTED_EXECUTOR_BACKEND": "ray",
        "CORRIGO_LIMITS__MAX_N": "3",
    }
    config = load_config(None, None, environ=env)
    assert config.server.host == "::1"
    assert (config.model.path, config.model.served_model_name) == ("/m", "mine")
    assert config.auth.api_keys == ["k1", "k2"]
    assert config.engine == {"enforce_eager": True, "distributed_executor_backend": "ray"}
    assert config.limits.max_n == 3


def test_config_file_from_environment_beats_flag(tmp_path):
    flag = write(tmp_path, "[server]\nport = 1\n")
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 2\n")
    assert load_config(flag, None, environ={"CORRIGO_CONFIG": str(other)}).server.port == 2


def test_unknown_key_names_key_and_source(tmp_path):
    path = write(tmp_path, "[server]\nhots = 'x'\n")
    with pytest.raises(ConfigError, match=r"server\.hots.*config file"):
        load_config(path, None, environ={})


def test_bad_value_from_environment_names_source():
    with pytest.raises(ConfigError, match=r"server\.port.*environment"):
        load_config(None, None, environ={"CORRIGO_PORT": "not-a-port"})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", None, environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"), None, environ={})


def test_serve_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ["--config", *(f"--{f.replace('_', '-')}" for f in FLAG_KEYS)]:
        assert flag in text


def test_every_shipped_eval_is_a_cli_command():
    # An eval is a module of evals/ with its own command line (the others are its parts).
    shipped = {p.stem for p in Path("evals").glob("*.py") if "\ndef add_parser(" in p.read_text()}
    assert {"unlearning", "refinement", "copilot", "proxy_tuning"} <= shipped
    for module in shipped:
        name = module.replace("_", "-")  # evals/proxy_tuning.py is `corrigo eval proxy-tuning`
        assert build_parser().parse_args(["eval", name]).eval == name
