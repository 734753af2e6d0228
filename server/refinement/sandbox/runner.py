"""Run untrusted Python in a confined subprocess (the ``python_tests`` verifier's engine).

The child is started through launcher.py (beside this, run as a script by its path), which
confines it (user, mount, network, PID, IPC, UTS and cgroup namespaces; a minimal read-only
root; NO_NEW_PRIVS and the seccomp filter of seccomp.py; rlimits; a uid of its own) before
exec'ing the interpreter on the program read from stdin. This side adds what the child cannot
enforce on itself: a cgroup per run for limits on the whole tree (cgroups.py), a
wall-clock limit, a cap on the output read back, a clean environment, and a bound on how many
sandboxes run at once, each in a slot with its own uid.

Fail closed: :func:`configure` probes once, at start-up, what the host allows (by running a
trivial program through the real launcher) and the configured level is either met or the
sandbox refuses to run anything (:attr:`Sandbox.refusal`, which the python_tests verifier turns
into a 400). Nothing here degrades to weaker confinement than configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import seccomp
from .cgroups import CgroupSupport, RunCgroup, detect
from .launcher import SETUP_FAILED
from .rootfs import CLEAN_ENV, RootFiles, RootFilesError, root_files

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("launcher.py")
#: ``namespaces``: the full confinement (the default); ``limits-only``: rlimits, a uid of its
#: own, NO_NEW_PRIVS and seccomp (no sockets) but the host's file system and processes in view.
Isolation = Literal["namespaces", "limits-only"]
#: ``auto``: a cgroup per run where the host allows (else the memory limit is per process, and
#: the start-up log says so); ``required``: refuse python_tests without; ``off``: never.
CgroupMode = Literal["auto", "required", "off"]
#: First of the uids (and gids) the sandbox slots run as when the server is root: far above
#: any account, container or systemd range in use.
DEFAULT_UID_BASE = 1_950_000_000
#: Seconds a launcher is given to clean up after SIGTERM before its group is killed.
KILL_GRACE = 2.0
#: Modules the start-up probe imports inside the sandbox: the standard library must work.
PROBE_IMPORTS = (
    "json", "math", "re", "collections", "itertools", "functools", "datetime", "decimal",
    "fractions", "random", "hashlib", "heapq", "bisect", "statistics", "string", "typing",
    "dataclasses", "unittest", "asyncio", "ctypes", "socket", "subprocess", "struct", "zlib",
)  # fmt: skip


@dataclass(frozen=True)
class SandboxPolicy:
    """The operator's choices (``[sandbox]`` in the config, server/config.py)."""

    enabled: bool = True
    isolation: Isolation = "namespaces"
    cgroups: CgroupMode = "auto"
    uid_base: int = DEFAULT_UID_BASE
    max_concurrent: int = 4


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    #: Memory of the whole sandbox tree where a cgroup is available, else of each process.
    memory_mb: int = 256
    #: Largest file the program may write, and the size of its private tmpfs.
    file_bytes: int = 1024 * 1024
    disk_mb: int = 16
    #: Processes the sandbox may have at once (its cgroup's pids.max, and RLIMIT_NPROC).
    processes: int = 16
    #: Bytes of stdout and of stderr read back; the program is killed beyond it.
    output_bytes: int = 64 * 1024


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_exceeded: bool
    seconds: float
    #: Set when confinement failed at run time: the program did not run.
    setup_error: str | None = None


@dataclass(frozen=True)
class ProbeReport:
    """What the start-up probe found; shown in the log and in /ready's ``sandbox``."""

    enabled: bool
    isolation: Isolation
    #: Whether the configured level is met (python_tests runs only then).
    available: bool
    #: What the host lacks for the configured level (empty when available).
    missing: tuple[str, ...] = ()
    namespaces: bool = False
    proc: bool = False
    seccomp: bool = False
    #: "v2 at ...", "v1 (memory, pids, cpu)", or why none.
    cgroups: str = ""
    #: "whole sandbox" with a cgroup per run, else "per process".
    memory_limit: str = "per process"
    distinct_uids: bool = False
    max_concurrent: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "missing": list(self.missing)}

    def summary(self) -> str:
        if not self.enabled:
            return "python_tests sandbox disabled ([sandbox] enabled = false)"
        if not self.available:
            return (
                f"python_tests REFUSED: the sandbox cannot meet [sandbox] isolation = "
                f"{self.isolation!r}: {'; '.join(self.missing)}"
            )
        parts = [
            f"isolation={self.isolation}",
            f"seccomp={'yes' if self.seccomp else 'no'}",
            f"proc={'own' if self.proc else 'none'}" if self.namespaces else "proc=host",
            f"cgroups={self.cgroups}",
            f"memory limit {self.memory_limit}",
            f"distinct uids={'yes' if self.distinct_uids else 'no (server not root)'}",
            f"slots={self.max_concurrent}",
        ]
        return f"python_tests sandbox: {', '.join(parts)} (probe {self.seconds:.2f} s)"


class Sandbox:
    """The configured sandbox and what its probe found; runs programs when the level is met."""

    def __init__(
        self,
        policy: SandboxPolicy,
        report: ProbeReport,
        files: RootFiles | None,
        cgroups: CgroupSupport,
    ) -> None:
        self.policy = policy
        self.report = report
        self.files = files
        self.cgroups = cgroups
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Queue[int]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def refusal(self) -> str | None:
        """None when python_tests may run, else the message a client gets (a 400)."""
        if not self.report.enabled:
            return "python_tests is disabled on this server ([sandbox] enabled = false)."
        if self.report.available:
            return None
        hint = (
            "The operator must allow unprivileged user namespaces (see README, python_tests) "
            "or set [sandbox] isolation = \"limits-only\" to accept weaker confinement"
            if self.policy.isolation == "namespaces"
            else "The operator must fix the host or the [sandbox] settings"
        )
        return (
            f"python_tests is unavailable on this server: its sandbox cannot be confined at "
            f"the configured level (isolation = {self.policy.isolation!r}); the host lacks: "
            f"{'; '.join(self.report.missing)}. {hint}."
        )

    def slot_ids(self, slot: int) -> tuple[int, int]:
        """The uid and gid a slot's program runs as: its own when the server is root."""
        if os.geteuid() == 0:
            return self.policy.uid_base + slot, self.policy.uid_base + slot
        return os.getuid(), os.getgid()

    async def run(self, source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
        """Run ``source`` in the sandbox and return what it printed and how it ended."""
        if self.refusal is not None:
            raise SandboxUnavailable(self.refusal)
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = asyncio.Queue()
            for slot in range(self.policy.max_concurrent):
                slots.put_nowait(slot)
            self._slots[loop] = slots
        slot = await slots.get()
        try:
            return await self._run(slot, source, limits)
        finally:
            slots.put_nowait(slot)

    def _prepare(self, slot: int, limits: SandboxLimits) -> tuple[dict, RunCgroup | None]:
        """The launcher's settings for one run, and the run's cgroups (created here)."""
        assert self.files is not None
        uid, gid = self.slot_ids(slot)
        host_dir = None
        if self.policy.isolation == "limits-only":
            host_dir = tempfile.mkdtemp(prefix="corrigo-sandbox-")
            os.chmod(host_dir, 0o711)
            os.mkdir(os.path.join(host_dir, "work"), 0o700)
            if os.geteuid() == 0:
                os.chown(os.path.join(host_dir, "work"), uid, gid)
        cgroup = None
        if self.cgroups.version is not None:
            cgroup = RunCgroup(self.cgroups, limits.memory_mb, limits.processes)
        settings = {
            **asdict(limits),
            "isolation": self.policy.isolation,
            "uid": uid,
            "gid": gid,
            "python": self.files.python,
            "binds": list(self.files.binds),
            "hide": list(self.files.hide),
            "host_dir": host_dir,
            "cgroup_procs": cgroup.procs if cgroup else [],
        }
        return settings, cgroup

    async def _run(self, slot: int, source: str, limits: SandboxLimits) -> SandboxResult:
        settings, cgroup = self._prepare(slot, limits)
        report_r, report_w = os.pipe()
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *_launcher_argv({**settings, "report_fd": report_w}),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=LAUNCHER_ENV,
                start_new_session=True,
                cwd="/",
                pass_fds=(report_w,),
            )
        except BaseException:
            os.close(report_r)
            await _cleanup(settings, cgroup)
            raise
        finally:
            os.close(report_w)
        exceeded = asyncio.Event()
        try:
            assert process.stdin is not None and process.stdout and process.stderr
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(source.encode())
                await process.stdin.drain()
                process.stdin.close()
            reads = asyncio.gather(
                _read_capped(process.stdout, limits.output_bytes, exceeded),
                _read_capped(process.stderr, limits.output_bytes, exceeded),
                process.wait(),
            )
            watch = asyncio.ensure_future(exceeded.wait())
            done, _ = await asyncio.wait(
                {reads, watch}, timeout=limits.wall_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            watch.cancel()
            timed_out = not done
            if reads not in done:
                await _stop(process)
            stdout, stderr, _ = await reads
            notes = _read_report(report_r)
            error = next((n["error"] for n in notes if "error" in n), None)
            if error is not None and process.returncode == SETUP_FAILED:
                logger.error("python_tests sandbox: confinement failed, nothing ran: %s", error)
            else:
                error = None
            return SandboxResult(
                process.returncode,
                stdout.decode(errors="replace"),
                stderr.decode(errors="replace"),
                timed_out,
                exceeded.is_set(),
                time.monotonic() - started,
                error,
            )
        finally:
            if process.returncode is None:
                _kill(process)
                with contextlib.suppress(Exception):
                    await process.wait()
            os.close(report_r)
            await _cleanup(settings, cgroup)


class SandboxUnavailable(RuntimeError):
    """The configured confinement cannot be had here; the message says why (for clients)."""


#: The launcher's environment: nothing of the server's.
LAUNCHER_ENV = CLEAN_ENV


def _launcher_argv(settings: dict) -> list[str]:
    return [os.path.realpath(sys.executable), "-I", str(LAUNCHER), json.dumps(settings)]


def _read_report(fd: int) -> list[dict]:
    """The launcher's setup notes (one JSON object a line); every writer has exited by now."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            data += chunk
    notes = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            notes.append(json.loads(line))
    return notes


async def _cleanup(settings: dict, cgroup: RunCgroup | None) -> None:
    if cgroup is not None and not await asyncio.to_thread(cgroup.remove):
        logger.error("python_tests sandbox: could not remove cgroups %s", cgroup.dirs)
    if settings.get("host_dir"):
        shutil.rmtree(settings["host_dir"], ignore_errors=True)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Ask the launcher to kill the run and clean up; kill its group if it does not."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), KILL_GRACE)
    except TimeoutError:
        _kill(process)


def _kill(process: asyncio.subprocess.Process) -> None:
    # The launcher's group; the program (PID 1 of its namespace) dies with the launcher.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _read_capped(stream: asyncio.StreamReader, cap: int, exceeded: asyncio.Event) -> bytes:
    data = bytearray()
    while chunk := await stream.read(65536):
        if len(data) + len(chunk) > cap:
            data += chunk[: cap - len(data)]
            exceeded.set()
            # Keep draining (and discarding) until the process is killed.
            while await stream.read(65536):
                pass
            break
        data += chunk
    return bytes(data)


# --- the start-up probe ------------------------------------------------------------------------


def _world_executable(path: str) -> bool:
    """Whether a user other than root can run ``path`` (every directory above it traversable)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)
    except OSError:
        return False


def _limits_only_python() -> str:
    """limits-only runs on the host's file system: an interpreter the slot's uid can reach."""
    if os.geteuid() != 0 or _world_executable(sys.executable):
        return os.path.realpath(sys.executable)
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.path.exists(candidate) and _world_executable(candidate):
            return os.path.realpath(candidate)
    raise RootFilesError(
        f"no Python interpreter the sandbox's uid can run ({sys.executable} is not reachable "
        "for other users; install python3 in /usr/bin)"
    )


_PROBE_PROGRAM = f"""\
import json, os
status = {{}}
try:
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        status[key] = value.strip()
except OSError:
    pass
failed = []
for name in {PROBE_IMPORTS!r}:
    try:
        __import__(name)
    except Exception as exc:
        failed.append("%s (%s)" % (name, exc))
print(json.dumps({{"uid": os.getuid(), "cap_eff": status.get("CapEff"),
                  "no_new_privs": status.get("NoNewPrivs"), "seccomp": status.get("Seccomp"),
                  "failed_imports": failed}}))
"""


@dataclass
class _Findings:
    missing: list[str] = field(default_factory=list)
    namespaces: bool = False
    proc: bool = False
    seccomp: bool = False


def _probe_run(sandbox: Sandbox, findings: _Findings) -> None:
    """Run the probe program through the real launcher, as slot 0, and check what it saw."""
    limits = SandboxLimits(wall_seconds=30)
    settings, cgroup = sandbox._prepare(0, limits)
    report_r, report_w = os.pipe()
    try:
        try:
            done = subprocess.run(
                _launcher_argv({**settings, "report_fd": report_w}),
                input=_PROBE_PROGRAM.encode(),
                capture_output=True,
                env=LAUNCHER_ENV,
                cwd="/",
                pass_fds=(report_w,),
                timeout=limits.wall_seconds,
                start_new_session=True,
            )
        finally:
            os.close(report_w)
        notes = _read_report(report_r)
    except subprocess.TimeoutExpired:
        findings.missing.append("the probe program did not finish")
        return
    finally:
        os.close(report_r)
        if cgroup is not None and not cgroup.remove():
            findings.missing.append(f"cgroups: could not remove {cgroup.dirs}")
        if settings.get("host_dir"):
            shutil.rmtree(settings["host_dir"], ignore_errors=True)
    errors = [n["error"] for n in notes if "error" in n]
    if errors or done.returncode != 0:
        why = errors[0] if errors else done.stderr.decode(errors="replace").strip()[-500:]
        findings.missing.append(why or f"the probe program exited with {done.returncode}")
        return
    seen = json.loads(done.stdout.decode().strip().splitlines()[-1])
    findings.namespaces = sandbox.policy.isolation == "namespaces"
    findings.proc = any(n.get("proc") for n in notes)
    findings.seccomp = seen["seccomp"] == "2" and seen["no_new_privs"] == "1"
    if seen["cap_eff"] not in (None, "0000000000000000"):
        findings.missing.append(f"the program kept capabilities ({seen['cap_eff']})")
    if seen["seccomp"] is not None and not findings.seccomp:
        findings.missing.append("seccomp filter not in force")
    if seen["failed_imports"]:
        findings.missing.append(f"standard modules fail: {', '.join(seen['failed_imports'])}")


def _unmapped_uids(policy: SandboxPolicy) -> str | None:
    """Why the slots' uids cannot be used (not mapped in corrigo's own user namespace, as in
    rootless or remapped containers), or None."""
    if os.geteuid() != 0:
        return None
    first, last = policy.uid_base, policy.uid_base + policy.max_concurrent - 1
    try:
        ranges = [
            (int(inside), int(inside) + int(count) - 1)
            for inside, _, count in (
                line.split() for line in Path("/proc/self/uid_map").read_text().splitlines()
            )
        ]
    except (OSError, ValueError):
        return None
    if any(low <= first and last <= high for low, high in ranges):
        return None
    return (
        f"the slots' uids {first}-{last} are not mapped in corrigo's user namespace "
        "(/proc/self/uid_map); set [sandbox] uid_base to a free range inside it"
    )


def probe(policy: SandboxPolicy = SandboxPolicy()) -> Sandbox:
    """Find out what the host allows for ``policy`` (about 0.1-0.5 s; run once at start-up)."""
    started = time.monotonic()
    findings = _Findings()
    if not policy.enabled:
        report = ProbeReport(False, policy.isolation, False)
        return Sandbox(policy, report, None, CgroupSupport(None, {}, "sandbox disabled"))
    for problem in (seccomp.supported(), _unmapped_uids(policy)):
        if problem is not None:
            findings.missing.append(problem)
    files = None
    try:
        if policy.isolation == "namespaces":
            files = root_files()
        else:
            files = RootFiles(_limits_only_python(), (), ())
    except RootFilesError as exc:
        findings.missing.append(str(exc))
    cgroups = (
        detect() if policy.cgroups != "off" else CgroupSupport(None, {}, "off ([sandbox] cgroups)")
    )
    if policy.cgroups == "required" and cgroups.version is None:
        findings.missing.append(f"cgroups (required by [sandbox] cgroups): {cgroups.detail}")
    sandbox = Sandbox(policy, ProbeReport(True, policy.isolation, False), files, cgroups)
    if not findings.missing:
        _probe_run(sandbox, findings)
    report = ProbeReport(
        enabled=True,
        isolation=policy.isolation,
        available=not findings.missing,
        missing=tuple(findings.missing),
        namespaces=findings.namespaces,
        proc=findings.proc,
        seccomp=findings.seccomp,
        cgroups=cgroups.detail if cgroups.version else f"none ({cgroups.detail})",
        memory_limit="whole sandbox" if cgroups.version else "per process",
        distinct_uids=os.geteuid() == 0,
        max_concurrent=policy.max_concurrent,
        seconds=round(time.monotonic() - started, 3),
    )
    return Sandbox(policy, report, files, cgroups)


_active: Sandbox | None = None


def configure(policy: SandboxPolicy) -> Sandbox:
    """Probe the host for ``policy``, log what it allows, and make it the sandbox
    :func:`run_python` uses."""
    global _active
    sandbox = probe(policy)
    if not policy.enabled:
        logger.info(sandbox.report.summary())
    elif not sandbox.report.available:
        logger.error(sandbox.report.summary())
    elif policy.isolation == "limits-only":
        logger.warning(
            "%s. WARNING: limits-only sandbox: python_tests code sees the host's files and "
            "processes; use it only with trusted clients",
            sandbox.report.summary(),
        )
    else:
        logger.info(sandbox.report.summary())
    _active = sandbox
    return sandbox


def active() -> Sandbox | None:
    return _active


async def run_python(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``source`` in the configured sandbox (probing the default policy on first use when
    nothing configured one). Raises :class:`SandboxUnavailable` when it cannot be confined."""
    sandbox = _active
    if sandbox is None:
        sandbox = await asyncio.to_thread(configure, SandboxPolicy())
    return await sandbox.run(source, limits)

