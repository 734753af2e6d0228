"""Code of another git revision, imported beside this one (a benchmark's baseline)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def module_at(rev: str, path: str, name: str, replace: dict[str, str] | None = None) -> ModuleType:
    """The module ``path`` as it is at git revision ``rev``, imported as ``name`` (a dotted
    name inside the package it belongs to, so that its relative imports resolve there), with
    the source substitutions ``replace`` (to point its imports at other baseline modules)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    for old, new in (replace or {}).items():
        source = source.replace(old, new)
    file = Path(tempfile.mkdtemp()) / Path(path).name
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
