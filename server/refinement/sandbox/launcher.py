"""Confines the untrusted program of a python_tests run, then execs the interpreter on it.

Started by runner.py (beside this) as ``python -I launcher.py '<json settings>'`` with a clean
environment; it imports nothing outside the standard library (seccomp.py, beside it, is
loaded by path). Three processes, one code path whether or not the server holds CAP_SYS_ADMIN:

- **A, the launcher** (the server's user, root or not): a child subreaper, so whatever the
  program orphans is re-parented here and reaped. It puts B into the run's cgroups, writes B's
  uid/gid maps from outside (one uid, mapped to itself: the slot's uid when the server is root,
  else the server's), waits, and at the end kills whatever is left of the run (in limits-only
  mode: every descendant, and as root every process of the slot's uid) before passing the
  program's exit status on. Setup problems go to the report fd as one JSON line, never to the
  program's stderr; the exit code is then 125.
- **B**: drops supplementary groups and the group id, unshares the user, mount, network, PID,
  IPC, UTS and cgroup namespaces, opens (still as the server's uid, which may traverse the
  server's own directories) the files the minimal root will show, switches to the slot's uid
  inside its user namespace and forks C, whose exit status it passes on.
- **C**: PID 1 of the new PID namespace, so everything the program forks dies with it. It
  builds a minimal root on a tmpfs (read-only binds of only the interpreter, its standard
  library without site-packages, and the shared libraries those need; /dev/null, zero, random,
  urandom; a fresh /proc when the kernel allows; a private tmpfs /tmp holding the working
  directory), pivots into it and detaches the host's root, makes it read-only, applies the
  rlimits, sets NO_NEW_PRIVS, loads the seccomp filter and execs ``python -I -S -B -``. The
  program's uid is not 0 in its namespace, so execve leaves it no capability.

In ``limits-only`` mode (explicitly configured; runner.py never falls back to it) B
only switches uid and C only applies the limits, NO_NEW_PRIVS and the filter (no sockets then).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import resource
import signal
import stat
import sys
import time
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = (
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    | CLONE_NEWCGROUP
)  # fmt: skip
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
# statvfs f_flag bits -> the mount flags a bind in a user namespace must keep (they are locked).
ST_TO_MS = {
    os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}  # fmt: skip
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Exit code of a run whose confinement failed (the report fd says why); nothing was run.
SETUP_FAILED = 125
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
#: Where C assembles the new root before pivoting into it (any directory of the host will do:
#: the mount is private to the sandbox's mount namespace).
STAGING = "/tmp"
WORK = "/tmp/work"

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]  # fmt: skip
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]  # fmt: skip


def _load_seccomp():
    spec = importlib.util.spec_from_file_location(
        "corrigo_seccomp", Path(__file__).with_name("seccomp.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seccomp = _load_seccomp()


class SetupError(Exception):
    """Confinement could not be had; the run is refused (nothing of the program ran)."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None):
    _check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _report(fd: int, **fields) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(fields) + "\n").encode())


# --- A: the launcher -------------------------------------------------------------------------


def main() -> None:
    settings = json.loads(sys.argv[1])
    report = settings["report_fd"]
    os.set_inheritable(report, False)  # never reaches the program
    namespaces = settings["isolation"] == "namespaces"
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(go_w)
        os.close(ready_r)
        _outer_child(settings, go_r, ready_w)
    os.close(go_r)
    os.close(ready_w)
    signal.signal(signal.SIGTERM, lambda *_: _kill_quietly(child))
    try:
        for procs in settings["cgroup_procs"]:
            Path(procs).write_text(str(child))
        os.write(go_w, b"1")
        if namespaces:
            if os.read(ready_r, 1) != b"1":
                raise SetupError("the sandbox process ended before its namespaces were set up")
            _map_ids(child, settings["uid"], settings["gid"])
            os.write(go_w, b"1")
    except (OSError, SetupError) as exc:
        _kill_quietly(child)
        _report(report, error=f"{exc}")
        _reap_all(child)
        os._exit(SETUP_FAILED)
    os.close(go_w)
    code = _reap_all(child)
    if not namespaces:
        _sweep(settings)
    os._exit(code)


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _map_ids(pid: int, uid: int, gid: int) -> None:
    """One id, mapped to itself: the program's uid is not 0 inside, so it has no capability."""
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/uid_map").write_text(f"{uid} {uid} 1\n")
    Path(f"/proc/{pid}/gid_map").write_text(f"{gid} {gid} 1\n")


def _reap_all(child: int) -> int:
    """Wait for ``child`` and reap every orphan re-parented here; ``child``'s exit code."""
    code = SETUP_FAILED
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return code
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
            # Anything of the run still alive outside a PID namespace (limits-only orphans).
            _kill_descendants()


def _children() -> list[int]:
    me = os.getpid()
    try:
        text = Path(f"/proc/{me}/task/{me}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _kill_descendants() -> None:
    """SIGKILL every descendant; they are re-parented to this subreaper as their parents die,
    so repeating until none is left reaches them all."""
    for _ in range(1000):
        pids = _children()
        if not pids:
            return
        for pid in pids:
            _kill_quietly(pid)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.001)


def _sweep(settings: dict) -> None:
    """limits-only, as root: kill every process left of the slot's uid. The subreaper already
    reaches every descendant; a uid-wide kill from a helper of that uid costs one fork and
    leaves no doubt."""
    uid = settings["uid"]
    if os.geteuid() != 0 or uid == os.geteuid():
        return
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setresgid(settings["gid"], settings["gid"], settings["gid"])
            os.setresuid(uid, uid, uid)
            for _ in range(100):
                if libc.kill(-1, signal.SIGKILL) != 0:  # ESRCH: none left
                    break
        finally:
            os._exit(0)
    _reap_all(helper)


# --- B: credentials and namespaces -----------------------------------------------------------


def _outer_child(settings: dict, go_r: int, ready_w: int) -> None:
    report = settings["report_fd"]
    try:
        if os.read(go_r, 1) != b"1":  # A has put this process into the run's cgroups
            os._exit(SETUP_FAILED)
        root = os.geteuid() == 0
        uid, gid = settings["uid"], settings["gid"]
        if root:
            os.setgroups([])
        fds: dict[str, int] = {}
        if settings["isolation"] == "namespaces":
            if root:
                os.setresgid(gid, gid, gid)
            _check(libc.unshare(NAMESPACES), "unshare (user namespaces)")
            os.write(ready_w, b"1")
            if os.read(go_r, 1) != b"1":  # A has written the uid/gid maps
                os._exit(SETUP_FAILED)
            # Opened with the launcher's uid, which may traverse the server's directories;
            # bound later from /proc/self/fd, after the switch to the slot's uid.
            for path in [*settings["binds"], *DEVICES]:
                fds[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        elif root:
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        os.close(go_r)
        os.close(ready_w)
        program = os.fork()
    except (OSError, SetupError) as exc:
        _report(report, error=f"{exc}")
        os._exit(SETUP_FAILED)
    if program == 0:
        _program(settings, fds)
    _, status = os.waitpid(program, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


# --- C: the program's process ----------------------------------------------------------------


def _program(settings: dict, fds: dict[str, int]) -> None:
    report = settings["report_fd"]
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if settings["isolation"] == "namespaces":
            proc = _minimal_root(settings, fds)
            _report(report, proc=proc)
            work = WORK
        else:
            work = os.path.join(settings["host_dir"], "work")
        os.chdir(work)
        _limits(settings)
        seccomp.install(network=settings["isolation"] == "namespaces")
    except (OSError, SetupError) as exc:
        _report(report, error=f"{exc}")
        os._exit(SETUP_FAILED)
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
    python = settings["python"]
    try:
        os.execve(python, [python, "-I", "-S", "-B", "-"], env)
    except OSError as exc:
        _report(report, error=f"exec {python}: {exc}")
        os._exit(SETUP_FAILED)


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind(fd: int, source: str, target: str, *, device: bool = False) -> None:
    """Bind the file or directory open as ``fd`` at ``target``, read-only (devices: writable,
    as /dev/null must be), never setuid, keeping the flags the source's mount locks."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        _mkdirs(target)
    else:
        _mkdirs(os.path.dirname(target))
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND, None)
    locked = 0
    flags = os.statvfs(target).f_flag
    for st, ms in ST_TO_MS.items():
        if flags & st:
            locked |= ms
    if device:
        locked &= ~(MS_NODEV | MS_RDONLY)
    wanted = MS_NOSUID | (MS_NOEXEC if device else MS_NODEV | MS_RDONLY)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | wanted | locked, None)
    os.close(fd)


def _minimal_root(settings: dict, fds: dict[str, int]) -> bool:
    """Build the sandbox's root on a tmpfs and pivot into it; whether it has a /proc."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    root = STAGING
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for path in settings["binds"]:
        _bind(fds[path], path, root + path)
    for path in settings["hide"]:
        _mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
               "size=4k,nr_inodes=1,mode=0555")  # fmt: skip
    for path in DEVICES:
        _bind(fds[path], path, root + path, device=True)
    _mkdirs(root + "/proc")
    proc = False
    # A /proc showing only the sandbox's processes (and, with subset=pid, nothing of the host's
    # kernel state); refused in some containers, whose /proc has masked paths.
    for options in ("subset=pid", None):
        try:
            _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
            proc = True
            break
        except SetupError:
            continue
    if not proc:
        os.rmdir(root + "/proc")
    if proc:
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{root}/dev/{name}")  # fmt: skip
    _mkdirs(root + "/tmp")
    uid, gid = os.getuid(), os.getgid()
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={settings['disk_mb']}m,nr_inodes=1024,mode=0700,uid={uid},gid={gid}")  # fmt: skip
    os.chdir(root)
    _check(libc.syscall(seccomp.ARCHES[seccomp.machine()].numbers["pivot_root"], b".", b"."),
           "pivot_root")  # fmt: skip
    _check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.mkdir(WORK, 0o700)
    with contextlib.suppress(OSError):
        hostname = b"sandbox"
        libc.sethostname(hostname, len(hostname))
    return proc


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


if __name__ == "__main__":
    main()
