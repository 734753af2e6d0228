"""Limits for a whole python_tests sandbox tree: one cgroup per run (memory, pids, CPU).

rlimits bind each process on its own (four processes get four times RLIMIT_AS), so where the
host lets corrigo create cgroups, each run gets its own: cgroup v2 below corrigo's cgroup when
memory and pids are enabled in its ``cgroup.subtree_control`` (a delegated subtree), else the
v1 memory, pids and cpu hierarchies where corrigo may create directories. :func:`detect` says
which, once at start-up (runner.py logs it); :class:`RunCgroup` creates a run's cgroups before
the launcher starts and removes them, killing whatever is left, after it ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

V1_CONTROLLERS = ("memory", "pids", "cpu")
#: Controllers a tree limit cannot do without (cpu is a bonus: RLIMIT_CPU still binds).
REQUIRED = ("memory", "pids")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupSupport:
    #: "v2", "v1", or None when no cgroup can be had.
    version: str | None
    #: Controller (v2: "unified") -> the directory run cgroups are created in.
    parents: dict[str, str]
    #: Why not (or what is missing), for the start-up log and /ready.
    detail: str


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(mount root, mount point, fs type, super options) of every cgroup mount."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if tail and tail[0] in ("cgroup", "cgroup2"):
                out.append((fields[3], fields[4], tail[0], tail[2] if len(tail) > 2 else ""))
    return out


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                out[name] = path
    return out


def _join(mount_root: str, mount_point: str, path: str) -> str:
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else None
    if relative is None or relative.startswith(".."):
        return ""
    return os.path.normpath(os.path.join(mount_point, relative))


def _can_create(parent: str) -> bool:
    probe = os.path.join(parent, f"corrigo-probe-{secrets.token_hex(4)}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        os.rmdir(probe)
    return True


def detect() -> CgroupSupport:
    mounts = _mountinfo()
    own = _own_cgroups()
    reasons = []
    for root, point, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        parent = _join(root, point, own[""])
        try:
            enabled = set(Path(parent, "cgroup.subtree_control").read_text().split())
        except OSError:
            enabled = set()
        lacking = [c for c in REQUIRED if c not in enabled]
        if lacking:
            missing = ", ".join(lacking)
            reasons.append(f"v2: {missing} not enabled in {parent}/cgroup.subtree_control")
        elif not _can_create(parent):
            reasons.append(f"v2: cannot create cgroups in {parent}")
        else:
            return CgroupSupport("v2", {"unified": parent}, f"v2 at {parent}")
    parents: dict[str, str] = {}
    for controller in V1_CONTROLLERS:
        for root, point, fstype, options in mounts:
            if fstype == "cgroup" and controller in options.split(",") and controller in own:
                parent = _join(root, point, own[controller])
                if parent and _can_create(parent):
                    parents[controller] = parent
                break
    lacking = [c for c in REQUIRED if c not in parents]
    if not lacking:
        names = ", ".join(parents)
        return CgroupSupport("v1", parents, f"v1 ({names})")
    reasons.append(f"v1: cannot create {', '.join(lacking)} cgroups")
    return CgroupSupport(None, {}, "; ".join(reasons))


class RunCgroup:
    """The cgroups of one run, created with the run's limits (``memory_mb`` for the whole tree,
    ``processes`` tasks, one CPU)."""

    def __init__(self, support: CgroupSupport, memory_mb: int, processes: int) -> None:
        name = f"corrigo-sandbox-{secrets.token_hex(6)}"
        self.dirs = [os.path.join(parent, name) for parent in support.parents.values()]
        self.version = support.version
        memory = str(memory_mb * 1024 * 1024)
        try:
            for path in self.dirs:
                os.mkdir(path, 0o700)
            for controller, parent in support.parents.items():
                d = os.path.join(parent, name)
                if self.version == "v2":
                    self._write(d, "memory.max", memory)
                    self._write(d, "memory.swap.max", "0", optional=True)
                    self._write(d, "pids.max", str(processes))
                    self._write(d, "cpu.max", f"{CPU_PERIOD_US} {CPU_PERIOD_US}", optional=True)
                elif controller == "memory":
                    self._write(d, "memory.limit_in_bytes", memory)
                    self._write(d, "memory.memsw.limit_in_bytes", memory, optional=True)
                    # Without swap accounting the limit would push the tree into swap.
                    self._write(d, "memory.swappiness", "0", optional=True)
                elif controller == "pids":
                    self._write(d, "pids.max", str(processes))
                elif controller == "cpu":
                    self._write(d, "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    self._write(d, "cpu.cfs_quota_us", str(CPU_PERIOD_US))
        except OSError:
            self.remove()
            raise

    @staticmethod
    def _write(directory: str, name: str, value: str, optional: bool = False) -> None:
        path = os.path.join(directory, name)
        if optional and not os.path.exists(path):
            return
        Path(path).write_text(value)

    @property
    def procs(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill whatever is left in the run's cgroups and remove them; False if one stayed."""
        deadline = time.monotonic() + timeout
        left = [d for d in self.dirs if os.path.isdir(d)]
        while left:
            for d in left:
                if self.version == "v2":
                    with contextlib.suppress(OSError):
                        Path(d, "cgroup.kill").write_text("1")
                with contextlib.suppress(OSError):
                    for pid in Path(d, "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            left = [d for d in left if os.path.isdir(d)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return not left
