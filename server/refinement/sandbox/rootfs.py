"""What the python_tests sandbox's minimal root shows: the interpreter, its standard library and
the shared libraries they need, nothing else (launcher.py, beside this, binds them read-only
at their host paths, so the interpreter finds its prefix as usual).

Worked out once at start-up: the interpreter is the server's own (its real path), the standard
library is the one it was built with (a venv's base installation, without site-packages or
dist-packages, which are hidden under empty mounts), and the libraries are what ``ldd`` lists
for the interpreter and every extension module in lib-dynload.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass


@dataclass(frozen=True)
class RootFiles:
    #: The interpreter the sandbox execs (a real path, no symlink).
    python: str
    #: Host paths bound read-only at the same path, parents before what they contain.
    binds: tuple[str, ...]
    #: Directories inside a bound one, hidden under an empty read-only mount.
    hide: tuple[str, ...]


class RootFilesError(RuntimeError):
    """The interpreter's files could not be worked out (the sandbox is then unavailable)."""


#: The environment the sandbox's processes start with: nothing of the server's.
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _ldd(paths: list[str]) -> set[str]:
    # Resolved as the sandboxed interpreter loads them, in CLEAN_ENV: the server's own
    # LD_LIBRARY_PATH (which a library it imported may have set: opencv does) would otherwise
    # pick libraries from wherever that points and bind them into the sandbox.
    try:
        out = subprocess.run(
            ["ldd", *paths], capture_output=True, text=True, timeout=60, check=False, env=CLEAN_ENV
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RootFilesError(f"cannot list the interpreter's libraries (ldd: {exc})") from None
    libs = set()
    for line in out.splitlines():
        line = line.strip()
        if line.endswith(":"):  # ldd's header naming each file it lists
            continue
        target = line.split("=>", 1)[1] if "=>" in line else line
        path = target.strip().split(" (", 1)[0].strip()
        if path.startswith("/"):
            libs.add(path)
    return libs


def _outside(path: str, directories: list[str]) -> bool:
    return not any(path == d or path.startswith(d + os.sep) for d in directories)


def root_files(python: str | None = None) -> RootFiles:
    python = os.path.realpath(python or sys.executable)
    stdlib = os.path.realpath(sysconfig.get_path("stdlib"))
    dynload = os.path.realpath(
        sysconfig.get_config_var("DESTSHARED") or os.path.join(stdlib, "lib-dynload")
    )
    if not os.path.isfile(os.path.join(stdlib, "os.py")):
        raise RootFilesError(f"no standard library at {stdlib}")
    directories = [stdlib] + ([dynload] if _outside(dynload, [stdlib]) else [])
    extensions = sorted(glob.glob(os.path.join(dynload, "*.so")))
    libs = {os.path.normpath(p) for p in _ldd([python, *extensions])}
    files = [python, *sorted(p for p in libs if _outside(p, directories) and p != python)]
    missing = [p for p in files if not os.path.exists(p)]
    if missing:
        raise RootFilesError(f"shared libraries not found: {', '.join(missing)}")
    hide = tuple(
        os.path.join(stdlib, name)
        for name in ("site-packages", "dist-packages")
        if os.path.isdir(os.path.join(stdlib, name))
    )
    return RootFiles(python, (*directories, *files), hide)
