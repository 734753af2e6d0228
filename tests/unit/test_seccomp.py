"""The sandbox's seccomp filter (server/refinement/sandbox/seccomp.py): its syscall numbers and
its jumps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.refinement.sandbox import seccomp

HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
}


@pytest.mark.parametrize("arch", sorted(HEADERS))
def test_syscall_numbers_match_the_kernel_headers(arch):
    header = HEADERS[arch]
    if not header.exists():
        pytest.skip(f"{header} is not installed")
    defined = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", header.read_text())
    }
    numbers = seccomp.ARCHES[arch].numbers
    checked = [name for name in numbers if name in defined]
    assert len(checked) >= len(numbers) - 2  # headers older than the newest calls lack those
    for name in checked:
        assert numbers[name] == defined[name], name


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("network", [True, False])
def test_every_jump_lands_inside_the_program_and_it_ends_in_allow(arch, network):
    program = seccomp.program(seccomp.ARCHES[arch], network)
    for index, (code, jt, jf, _) in enumerate(program):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert index + 1 + max(jt, jf) < len(program)
    assert program[-1] == (seccomp.BPF_RET_K, 0, 0, seccomp.SECCOMP_RET_ALLOW)
    assert program[:3] == [
        (seccomp.BPF_LD_W_ABS, 0, 0, seccomp.OFFSET_ARCH),
        (seccomp.BPF_JEQ_K, 1, 0, seccomp.ARCHES[arch].audit),
        (seccomp.BPF_RET_K, 0, 0, seccomp.SECCOMP_RET_KILL_PROCESS),
    ]
    for name in seccomp.DENIED:
        assert name in seccomp.ARCHES[arch].numbers


def test_an_unknown_architecture_is_refused(monkeypatch):
    monkeypatch.setattr(seccomp, "machine", lambda: "riscv64")
    assert "riscv64" in seccomp.supported()
    with pytest.raises(OSError, match="riscv64"):
        seccomp.install(network=True)
