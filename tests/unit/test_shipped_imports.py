"""Shipped code never imports ``tests``: the wheel does not carry it (pyproject.toml), so an
installed corrigo would fail on such an import (tests/integration/test_installed_wheel.py runs the
wheel; this check finds the import without an engine, in every shipped module).

Shipped: every package the wheel includes (``[tool.setuptools.packages.find] include``) and
``bench/``, which maintainers run against an installed corrigo.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Shipped beside the wheel's packages: the benchmarks (bench/gpu_check.sh runs them).
ALSO_SHIPPED = ("bench",)
#: Calls that import a module named by a string.
IMPORT_CALLS = {"import_module", "__import__"}


def shipped_roots() -> list[Path]:
    """The top-level folders whose modules ship (the wheel's packages, then ``bench``)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        folder
        for folder in REPO.iterdir()
        if (folder / "__init__.py").is_file()
        and any(fnmatch.fnmatch(folder.name, p) for p in patterns)
    )
    return packages + [REPO / name for name in ALSO_SHIPPED]


def _is_tests(module: str) -> bool:
    return module == "tests" or module.startswith("tests.")


def imports_of_tests(source: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of ``tests`` in ``source``: ``import tests...``,
    ``from tests... import``, and ``importlib.import_module("tests...")`` / ``__import__``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if _is_tests(a.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and _is_tests(node.module):
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                name in IMPORT_CALLS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _is_tests(first.value)
            ):
                yield node.lineno, first.value


def test_no_shipped_module_imports_tests() -> None:
    roots = shipped_roots()
    assert {r.name for r in roots} >= {"server", "decoding", "adapters", "evals", "bench"}
    found = [
        f"{path.relative_to(REPO)}:{line}: imports {module}"
        for root in roots
        for path in sorted(root.rglob("*.py"))
        for line, module in imports_of_tests(path.read_text())
    ]
    assert not found, "shipped code imports the tests, which the wheel lacks:\n" + "\n".join(found)


def test_the_check_finds_each_form() -> None:
    source = """
import tests
import os, tests.support as s
from tests.support import start_server
from tests import support
from .tests import fine            # a package's own subpackage, not the top-level tests
import importlib
importlib.import_module("tests.support")
__import__("tests")
importlib.import_module("testsuite")
"""
    assert [line for line, _ in imports_of_tests(source)] == [2, 3, 4, 5, 8, 9]
