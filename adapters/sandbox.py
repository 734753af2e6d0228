"""Run untrusted Python in a confined subprocess (the ``python_tests`` verifier's engine).

The child is started through adapters/sandbox_launcher.py, which confines it (namespaces,
private tmpfs, fresh /proc, no network, unprivileged uid, resource limits) before exec'ing the
interpreter on the program read from stdin. This side adds what the child cannot enforce on
itself: a wall-clock limit, a cap on the output read back, a clean environment, a throw-away
host directory for the fallback path, and a bound on how many sandboxes run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
#: Sandboxes running at once, per server process (each may use a core).
MAX_CONCURRENT = 4
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 256
    #: Largest file the program may write, and the size of its private tmpfs.
    file_bytes: int = 1024 * 1024
    disk_mb: int = 16
    #: Processes the sandbox user may have (binds because that user is not root).
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


def sandbox_user() -> tuple[int, int]:
    """The unprivileged uid/gid the program runs as when the server is root."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _world_executable(path: str) -> bool:
    """Whether a user other than root can run ``path`` (every directory above it traversable)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)
    except OSError:
        return False


def sandbox_python() -> str:
    """An interpreter the sandbox user can run: this one when it can, else a system python3.
    The program runs with ``-I -S``: the standard library only, no site-packages."""
    if os.geteuid() != 0 or _world_executable(sys.executable):
        return os.path.realpath(sys.executable)
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.path.exists(candidate) and _world_executable(candidate):
            return os.path.realpath(candidate)
    raise RuntimeError(
        "no Python interpreter the sandbox user can run: install python3 in /usr/bin "
        f"({sys.executable} is not reachable for uid {sandbox_user()[0]})"
    )


async def run_python(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``source`` in the sandbox and return what it printed and how it ended."""
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, asyncio.Semaphore(MAX_CONCURRENT))
    async with slots:
        return await _run(source, limits)


async def _run(source: str, limits: SandboxLimits) -> SandboxResult:
    uid, gid = sandbox_user()
    host_dir = tempfile.mkdtemp(prefix="corrigo-sandbox-")
    if os.geteuid() == 0:
        os.chmod(host_dir, 0o711)
    settings = {
        **asdict(limits),
        "uid": uid,
        "gid": gid,
        "python": sandbox_python(),
        "host_dir": host_dir,
    }
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        os.path.realpath(sys.executable),
        "-I",
        str(LAUNCHER),
        json.dumps(settings),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        start_new_session=True,
        cwd="/",
    )
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
            _kill(process)
        stdout, stderr, _ = await reads
        return SandboxResult(
            process.returncode,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
            timed_out,
            exceeded.is_set(),
            time.monotonic() - started,
        )
    finally:
        if process.returncode is None:
            _kill(process)
            with contextlib.suppress(Exception):
                await process.wait()
        shutil.rmtree(host_dir, ignore_errors=True)


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
