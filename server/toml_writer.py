"""Writing a corrigo TOML config from Python values, for the programs that start a server of
their own (evaluations, benchmarks, tests) through server/launcher.py.

The standard library reads TOML (``tomllib``) but cannot write it; corrigo's configs need only
tables of scalars, lists and inline tables, which this writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    """``value`` as a TOML value: a boolean, number, string, list or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}: {value!r}")


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``{"section": {"key": value}}`` (dotted section names such as ``"copilots.eval"``
    allowed) as a TOML file at ``path``; returns ``path``."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path
