"""Confining a child process the way agent runtimes confine the commands they run (Codex on
Linux): ``no_new_privs``, a seccomp filter refusing network sockets, a Landlock ruleset refusing
file writes. Each ``confine_*`` is a ``preexec_fn``: it runs in the forked child before exec, so
the program started (``b24``) and all it starts inherit the confinement. Plain ctypes, no root.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Callable

__all__ = ["CONFINEMENTS", "confine_no_network", "confine_no_writes", "landlock_works"]

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
#: socket(2)'s number on the architectures the filter knows.
SYS_SOCKET = {"x86_64": 41, "aarch64": 198}.get(platform.machine())
#: Landlock's system calls (the same numbers on every architecture).
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
WRITE_FILE = 1 << 1
#: Writing a file and making or removing anything: every write of a file system (ABI 1).
NO_WRITES = WRITE_FILE | sum(1 << bit for bit in range(4, 13))


def _check(result: int, what: str) -> None:
    if result < 0:
        raise OSError(ctypes.get_errno(), what)


def no_new_privs() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def confine_no_network() -> None:
    """``no_new_privs`` and a seccomp filter refusing socket(AF_INET or AF_INET6) with EPERM;
    Unix sockets stay allowed (as in Codex's network-off filter but for its connect ban)."""
    assert SYS_SOCKET is not None
    program = [
        (0x20, 0, 0, 0),  # load the system call number
        (0x15, 0, 4, SYS_SOCKET),  # socket? else allow
        (0x20, 0, 0, 16),  # load its first argument, the address family
        (0x15, 1, 0, 2),  # AF_INET: refuse
        (0x15, 0, 1, 10),  # AF_INET6: refuse, else allow
        (0x06, 0, 0, SECCOMP_RET_ERRNO | 1),  # EPERM
        (0x06, 0, 0, SECCOMP_RET_ALLOW),
    ]
    code = b"".join(struct.pack("HBBI", *step) for step in program)
    filters = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(filters))
    no_new_privs()
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0), "seccomp")


def confine_no_writes() -> None:
    """``no_new_privs`` and a Landlock ruleset refusing every file write but to /dev/null (as
    Codex's legacy pipeline with no writable folder)."""
    ruleset = _libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, struct.pack("Q", NO_WRITES), ctypes.c_size_t(8), 0
    )
    _check(ruleset, "ruleset")
    null = os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)
    rule = struct.pack("=Qi", WRITE_FILE, null)
    added = _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0)
    _check(added, "rule")
    no_new_privs()
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock")


def landlock_works() -> bool:
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), 1)
    return version >= 1


#: name -> (preexec, what the in-process call hits: error code, exit code)
CONFINEMENTS: dict[str, tuple[Callable[[], None], str, int]] = {
    "no-network": (confine_no_network, "CONNECTION_FAILED", 6),
    "no-writes": (confine_no_writes, "LOCAL_IO_ERROR", 4),
}
