"""The wheel, installed outside the checkout, runs: a missing package or data file fails here.

The wheel is built from the project's files (those git tracks or would track), installed with
``--no-deps`` into a fresh virtual environment in a temporary folder, and run from there with
the checkout off ``sys.path``. Installing vLLM and torch again would take minutes, so the new
environment reuses this environment's third-party packages through a folder of links to them,
leaving out corrigo's own editable install; ``pip check`` then confirms that every dependency
corrigo declares is present. Every ``corrigo`` subcommand's ``--help`` runs (enumerated from
the parser, so a new one is covered), and ``corrigo serve`` answers one completion on the
embedded model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from server.launcher import QUICK_ENGINE, start_server
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parents[2]

#: Run by the new environment's interpreter: where corrigo's packages load from, and the
#: ``--help`` of every command path of the parser (``[]`` is ``corrigo`` itself), run in this one
#: process: a process per command would cost an interpreter start and the CLI's imports each
#: (about 1 s here), for the same parser code; the console script itself runs once, below.
PROBE = r"""
import argparse, contextlib, importlib, io, json, sys
from importlib.metadata import distribution
from server.cli import build_parser, main

def commands(parser, path=()):
    yield list(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))

def help_of(path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*path, "--help"])
    return out.getvalue()

packages = distribution("corrigo").read_text("top_level.txt").split()
print(json.dumps({
    "packages": {p: importlib.import_module(p).__file__ for p in packages},
    "sys_path": sys.path,
    "helps": {" ".join(path): help_of(path) for path in commands(build_parser())},
}))
"""


@dataclass(frozen=True)
class Installed:
    """corrigo installed from its wheel into a fresh virtual environment."""

    root: Path
    python: Path
    corrigo: Path
    site_packages: Path
    source: Path
    #: The environment to run it in: nothing added to ``sys.path`` from outside.
    env: dict[str, str]


def project_files(dest: Path) -> Path:
    """Copy the files git tracks or would track (what a fresh clone plus local work has) to
    ``dest``: the build then sees no stale ``build/`` or egg-info of this checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def own_install(entry: Path) -> bool:
    """Whether a site-packages entry belongs to corrigo's editable install of the checkout."""
    name = entry.name
    if name.startswith(("__editable__", "corrigo-", "corrigo.")) or name == "__pycache__":
        return True
    if name.endswith(".pth"):
        lines = entry.read_text(errors="replace").splitlines()
        return any(
            "corrigo" in line or (Path(line) / "server" / "cli.py").is_file() for line in lines
        )
    return False


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    env = {**os.environ, "PYTHONPATH": "", "PYTHONSAFEPATH": "1"}
    source = project_files(root / "src")
    # No build isolation: the build back-end is this environment's setuptools, no download.
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(root / "dist"), str(source)],
        root,
        env,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("corrigo-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root, env)
    python = root / "venv" / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).stdout.strip())  # fmt: skip
    links = root / "third-party"
    links.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not own_install(entry):
            (links / entry.name).symlink_to(entry)
    # addsitedir, not a bare path line, so that the packages' own .pth files apply too.
    (site / "corrigo-ci-third-party.pth").write_text(
        f"import site; site.addsitedir({str(links)!r})\n"
    )
    run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], root, env)
    return Installed(root, python, root / "venv" / "bin" / "corrigo", site, source, env)


def test_the_wheel_installs_complete_and_every_command_helps(installed: Installed) -> None:
    # pip check covers every installed distribution; this environment's own known gaps (the CPU
    # engine's removed CUDA extras) are not corrigo's: only corrigo's requirements must hold.
    check = subprocess.run(
        [str(installed.python), "-m", "pip", "check"],
        cwd=installed.root,
        env=installed.env,
        capture_output=True,
        text=True,
    )
    assert not [line for line in check.stdout.splitlines() if line.startswith("corrigo ")], (
        check.stdout
    )

    probe = json.loads(
        run([str(installed.python), "-c", PROBE], installed.root, installed.env).stdout
    )
    assert set(probe["packages"]) >= {"server", "decoding", "adapters", "evals"}
    for package, file in probe["packages"].items():
        assert Path(file).is_relative_to(installed.site_packages), (package, file)
    assert not [p for p in probe["sys_path"] if p and Path(p).resolve().is_relative_to(REPO)]

    # Every data file a package carries in the checkout is installed (documentation aside).
    for package in probe["packages"]:
        for file in (installed.source / package).rglob("*"):
            if file.is_file() and file.suffix not in {".py", ".md"}:
                relative = file.relative_to(installed.source)
                assert (installed.site_packages / relative).is_file(), f"{relative} not installed"

    helps = probe["helps"]
    assert {"serve", "copilot train", "eval copilot"} <= set(helps), sorted(helps)
    for path, text in helps.items():
        assert text.startswith(f"usage: {' '.join(['corrigo', *path.split()])}"), (path, text)
    entry_point = run([str(installed.corrigo), "--help"], installed.root, installed.env).stdout
    assert entry_point == helps[""]


@pytest.mark.engine
def test_the_installed_wheel_serves_the_embedded_model(installed: Installed, tmp_path) -> None:
    config = write_config(
        tmp_path / "corrigo.toml",
        {"engine": {**QUICK_ENGINE, "max_model_len": 512}, "server": {"log_level": "warning"}},
    )
    server = start_server(
        config,
        tmp_path / "server.log",
        command=(str(installed.corrigo),),
        cwd=installed.root,
        env=installed.env,
    )
    try:
        # The installed console script, run by the new environment's interpreter.
        assert psutil.Process(server.pid).cmdline()[:2] == [
            str(installed.python),
            str(installed.corrigo),
        ]
        r = httpx.post(
            f"{server.base_url}/v1/completions",
            json={"model": "smollm2-135m-instruct", "prompt": "The capital of France is",
                  "max_tokens": 4, "temperature": 0},
            timeout=120,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] >= 1 and body["choices"][0]["text"]
    finally:
        server.stop()
