"""Runs inside the sandbox's process before the untrusted program: confine, then exec.

Started by adapters/sandbox.py as ``python -I sandbox_launcher.py '<json settings>'`` with a
clean environment; it imports nothing outside the standard library. As root it moves into new
mount, network, PID, IPC and UTS namespaces (no network interface is up, not even loopback),
mounts private tmpfs over every world-writable directory and a fresh /proc, creates the
throw-away working directory, applies the resource limits, drops to an unprivileged uid and
execs the interpreter, which reads the program from stdin. The interpreter is PID 1 of its PID
namespace, so when it exits or is killed every process it started dies with it. Without root it
tries an unprivileged user namespace for the same, and otherwise keeps only the limits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
#: Directories any user may write to on a stock system; each gets a private tmpfs.
WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _namespaces(root: bool) -> bool:
    """Enter the namespaces; False when the kernel or our privileges do not allow it."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if root:
        return libc.unshare(flags) == 0
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(flags | CLONE_NEWUSER) != 0:
        return False
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    return True


def _confine_filesystem(settings: dict) -> None:
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    for path in WRITABLE:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={settings['disk_mb']}m")
    with contextlib.suppress(OSError):  # a /proc showing only this namespace's processes
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV, None)


def _limits(settings: dict) -> None:
    cpu = settings["cpu_seconds"]
    memory = settings["memory_mb"] * 1024 * 1024
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_DATA, (memory, memory)),
        (resource.RLIMIT_FSIZE, (settings["file_bytes"],) * 2),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_NPROC, (settings["processes"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, value)


def main() -> None:
    settings = json.loads(sys.argv[1])
    root = os.geteuid() == 0
    isolated = _namespaces(root)
    pid = os.fork()
    if pid:
        # The launcher waits for the program (PID 1 of its namespace) and passes its status on.
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
    base = settings["host_dir"]  # fallback: a directory the caller removes afterwards
    if isolated:
        try:
            _confine_filesystem(settings)
            base = "/tmp"  # a private tmpfs that vanishes with the namespace
        except OSError:
            pass
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    if root:
        os.chown(work, settings["uid"], settings["gid"])
    os.chdir(work)
    _limits(settings)
    if root:
        os.setgroups([])
        os.setgid(settings["gid"])
        os.setuid(settings["uid"])
    # Set after the uid change, which clears it: the program dies with the launcher.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
    python = settings["python"]
    os.execve(python, [python, "-I", "-S", "-B", "-"], env)


if __name__ == "__main__":
    main()
