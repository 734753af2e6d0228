"""The seccomp filter of the python_tests sandbox: a classic BPF program built here with ctypes.

Loaded by launcher.py (beside this) into the sandboxed process just before it execs the
interpreter (after PR_SET_NO_NEW_PRIVS), so the untrusted program and everything it starts run
under it. The filter refuses, with EPERM, what the sandbox's namespaces do not already contain
or what would let a process undo them: new namespaces (unshare, setns, clone with any
CLONE_NEW* flag), mounts and the new mount API, ptrace and cross-process memory access, bpf,
perf events, keyrings, userfaultfd, io_uring, module and kexec loading, file handles, and every
socket family but AF_INET/AF_INET6 (none at all without a network namespace). ``clone3`` gets
ENOSYS (its flags live in memory the filter cannot read) so that libc falls back to ``clone``.
``socketpair(AF_UNIX)`` stays allowed: an anonymous connected pair reaches nothing, and asyncio
and multiprocessing need it. System calls of another ABI (i386, x32) are refused; an
architecture not listed here is refused outright (fail closed): :func:`supported` says so
before anything runs.

Imports nothing outside the standard library: the launcher loads this file by path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# linux/audit.h
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# linux/seccomp.h, linux/filter.h, linux/prctl.h
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_MODE_FILTER = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
OFFSET_NR, OFFSET_ARCH = 0, 4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` (both architectures are little-endian)."""
    return 16 + 8 * index


AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
#: Every CLONE_NEW* flag (cgroup, uts, ipc, user, pid, net, mount, time).
CLONE_NEW_ANY = (
    0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00020000 | 0x80
)


class Arch:
    def __init__(self, audit: int, numbers: dict[str, int], x32: bool) -> None:
        self.audit = audit
        self.numbers = numbers
        #: Whether syscall numbers with X32_SYSCALL_BIT reach this ABI's table (x86_64).
        self.x32 = x32


#: The system calls the filter refuses with EPERM, besides those it inspects (clone, clone3,
#: socket, socketpair). Numbers from asm/unistd_64.h (x86_64) and asm-generic/unistd.h
#: (aarch64); tests/unit/test_seccomp.py checks them against the headers where installed.
DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "open_tree_attr", "ptrace",
    "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at",
)  # fmt: skip

# The numbers from 424 on are shared by every architecture.
_COMMON = {
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "mount_setattr": 442, "open_tree_attr": 467,
}  # fmt: skip

ARCHES = {
    "x86_64": Arch(
        AUDIT_ARCH_X86_64,
        {
            "socket": 41, "socketpair": 53, "clone": 56, "ptrace": 101, "pivot_root": 155,
            "chroot": 161, "mount": 165, "umount2": 166, "init_module": 175,
            "delete_module": 176, "kexec_load": 246, "add_key": 248, "request_key": 249,
            "keyctl": 250, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303,
            "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
            "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
            "userfaultfd": 323, **_COMMON,
        },  # fmt: skip
        x32=True,
    ),
    "aarch64": Arch(
        AUDIT_ARCH_AARCH64,
        {
            "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51, "unshare": 97,
            "kexec_load": 104, "init_module": 105, "delete_module": 106, "ptrace": 117,
            "socket": 198, "socketpair": 199, "add_key": 217, "request_key": 218, "keyctl": 219,
            "clone": 220, "perf_event_open": 241, "name_to_handle_at": 264,
            "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
            "process_vm_writev": 271, "finit_module": 273, "bpf": 280, "userfaultfd": 282,
            "kexec_file_load": 294, **_COMMON,
        },  # fmt: skip
        x32=False,
    ),
}
ARCHES["arm64"] = ARCHES["aarch64"]


def machine() -> str:
    return platform.machine().lower()


def supported() -> str | None:
    """None when this machine's architecture has a filter, else why not."""
    if machine() in ARCHES:
        return None
    return f"no seccomp filter for architecture {machine()!r} (corrigo has x86_64 and aarch64)"


def _stmt(code: int, k: int) -> tuple[int, int, int, int]:
    return (code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def program(arch: Arch, network: bool) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions. ``network``: allow AF_INET/AF_INET6
    sockets (the sandbox has its own, empty network namespace); without it no socket at all."""
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    nosys = SECCOMP_RET_ERRNO | errno.ENOSYS
    n = arch.numbers
    out: list[tuple[int, int, int, int]] = [
        _stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        _jump(BPF_JEQ_K, arch.audit, 1, 0),
        _stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        _stmt(BPF_LD_W_ABS, OFFSET_NR),
    ]
    if arch.x32:
        out += [_jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1), _stmt(BPF_RET_K, deny)]
    for name in DENIED:
        out += [_jump(BPF_JEQ_K, n[name], 0, 1), _stmt(BPF_RET_K, deny)]
    out += [_jump(BPF_JEQ_K, n["clone3"], 0, 1), _stmt(BPF_RET_K, nosys)]
    # clone: refuse any CLONE_NEW* flag in its first argument.
    out += [
        _jump(BPF_JEQ_K, n["clone"], 0, 3),
        _stmt(BPF_LD_W_ABS, _arg_low(0)),
        _jump(BPF_JSET_K, CLONE_NEW_ANY, 0, 1),
        _stmt(BPF_RET_K, deny),
        _stmt(BPF_LD_W_ABS, OFFSET_NR),
    ]
    # socketpair: AF_UNIX only (an anonymous pair); socket: AF_INET/AF_INET6 with a network
    # namespace, nothing without.
    out += [
        _jump(BPF_JEQ_K, n["socketpair"], 0, 3),
        _stmt(BPF_LD_W_ABS, _arg_low(0)),
        _jump(BPF_JEQ_K, AF_UNIX, 1, 0),
        _stmt(BPF_RET_K, deny),
        _stmt(BPF_LD_W_ABS, OFFSET_NR),
    ]
    if network:
        out += [
            _jump(BPF_JEQ_K, n["socket"], 0, 4),
            _stmt(BPF_LD_W_ABS, _arg_low(0)),
            _jump(BPF_JEQ_K, AF_INET, 2, 0),
            _jump(BPF_JEQ_K, AF_INET6, 1, 0),
            _stmt(BPF_RET_K, deny),
        ]
    else:
        out += [_jump(BPF_JEQ_K, n["socket"], 0, 1), _stmt(BPF_RET_K, deny)]
    out.append(_stmt(BPF_RET_K, SECCOMP_RET_ALLOW))
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(network: bool) -> None:
    """Set NO_NEW_PRIVS and load the filter into this process (inherited by its children and
    kept across execve). Raises OSError when the kernel refuses or the architecture is unknown."""
    reason = supported()
    if reason is not None:
        raise OSError(errno.ENOSYS, reason)
    instructions = program(ARCHES[machine()], network)
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in instructions)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(instructions), ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]  # fmt: skip
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {os.strerror(err)}")
