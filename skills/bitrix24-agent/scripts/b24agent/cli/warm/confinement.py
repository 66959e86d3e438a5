"""What confines a process, read from the kernel: so a warm server serves only callers confined
exactly as it is, and a sandboxed ``b24`` never runs its call outside its sandbox.

Why: the warm server runs a call with its own rights, not the caller's. An agent runtime that
confines the commands it runs (Codex on Linux: ``no_new_privs``, a seccomp filter refusing
network sockets, Landlock or bubblewrap for files) would otherwise have its ``b24`` hand the call
to a server started outside the sandbox, and the write the sandbox forbade would run there
(review 7, H2). The caller's own word is worth nothing (a process may write its own request
frame), so the worker reads the connecting process from ``/proc`` (``worker.py``); the caller
puts the same description into the socket's name (``wire.code_stamp``), so a legitimately
sandboxed caller finds, or starts, a server inside its own sandbox and keeps the fast path.

A description is, for one process: its namespaces (cgroup, ipc, mnt, net, pid, time, user, uts),
its root folder, its cgroup; from ``status`` its user and group ids, supplementary groups,
capability sets, ``NoNewPrivs``, ``Seccomp`` and ``Seccomp_filters``; and its LSM labels
(``attr/current``, ``attr/apparmor/current``, ``attr/smack/current``: AppArmor, SELinux,
Smack). Any difference, or anything unreadable, means "not the same confinement".

Covered, so a call never crosses it: a seccomp filter (mode, and how many filters are stacked),
``no_new_privs`` and with it every unprivileged Landlock ruleset (the kernel lets a process
without CAP_SYS_ADMIN restrict itself only once ``no_new_privs`` is set, and Landlock shows in no
``/proc`` field); new namespaces (bubblewrap, containers, Codex's bubblewrap pipeline, which also
sets ``no_new_privs`` and a seccomp filter); chroot; another cgroup; dropped capabilities or
groups; an AppArmor, SELinux or Smack label. A traced caller (``TracerPid``: a ptrace-based
sandbox) is never served. Codex's Linux sandbox, read in openai/codex codex-rs/linux-sandbox:
its legacy pipeline sets ``no_new_privs`` and Landlock (plus, without network, a seccomp filter
that refuses AF_UNIX connect too, so its ``b24`` never reaches any server); its bubblewrap
pipeline adds namespaces. Both differ from an unconfined server here.

Not covered, plainly:
- A sandbox that changes none of these: rlimits alone, a proxy set in the environment, an
  ``LD_PRELOAD`` interposer, a firewall keyed on the user id, a network namespace shared by
  both; a Landlock ruleset entered by a process holding CAP_SYS_ADMIN without ``no_new_privs``.
- Two sandboxes that look alike: the same namespaces, the same number of seccomp filters and
  ``no_new_privs`` but other rules (two Codex sessions of the legacy pipeline with other
  writable folders). A server started in one serves the other; each is still confined.
- Only the connecting thread group's main thread is read: a process that confined just one of
  its threads was never confined as a whole.
- Before Linux 6.5 (no SO_PEERPIDFD) the pid from SO_PEERCRED is read as is: a confined process
  that connects and exits, its pid then taken by an unconfined process of this user before a
  spare accepts, would be judged by that process. From 6.5 on the kernel's pidfd of the
  connecting process pins it: a pid reused meanwhile is refused.
- A brokered call (``B24_BROKER``) is not checked: it crosses a boundary on purpose, to a
  broker of the operator's account that decides each call by the operator's policy (broker/).

Uses only ``os`` (``wire.py`` runs it on every ``b24`` start).
"""

from __future__ import annotations

import os

__all__ = ["NAMESPACES", "describe", "of_process", "of_self", "traced"]

#: Every namespace a process can be moved out of.
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
#: The ``status`` lines that say what a process may do (not what it is doing).
STATUS_FIELDS = (
    "Uid:",
    "Gid:",
    "Groups:",
    "CapInh:",
    "CapPrm:",
    "CapEff:",
    "CapBnd:",
    "CapAmb:",
    "NoNewPrivs:",
    "Seccomp:",
    "Seccomp_filters:",
)
#: Added to a description when a tracer holds the process.
TRACED = "traced"
#: The LSM label files: the major LSM's (``current``), then each stackable one's own.
LABELS = ("attr/current", "attr/apparmor/current", "attr/smack/current")
#: What reading a label file says when no such LSM is active: no label, not a failure.
NO_LABEL = (2, 22)  # ENOENT: that LSM is not built in; EINVAL: no LSM provides "current"
#: Large enough for any ``status`` or ``cgroup`` file (a few KB).
READ_LIMIT = 1 << 16


def describe(proc: int) -> tuple[str, ...] | None:
    """The confinement of the process whose ``/proc/PID`` folder is open as ``proc``; None when
    any part of it cannot be read (a process of another user, a zombie, a foreign /proc)."""
    try:
        found = [_namespace(proc, kind) for kind in NAMESPACES]
        found.append(os.readlink("root", dir_fd=proc))
        found.append(_read(proc, "cgroup"))
        status = _read(proc, "status")
        found += [line for line in status.splitlines() if line.startswith(STATUS_FIELDS)]
        if _tracer(status):
            found.append(TRACED)
        found += [_label(proc, label) for label in LABELS]
    except Exception:  # whatever /proc holds, "unknown" is the safe answer
        # Unreadable or unexpected (a zombie, a foreign /proc, a kernel's new format): not known
        # to be the same confinement, so no server takes the call and it runs in its process.
        return None
    return tuple(found)


def of_self() -> tuple[str, ...] | None:
    """This process's own confinement."""
    return of_process("self")


def of_process(pid: int | str) -> tuple[str, ...] | None:
    """The confinement of process ``pid`` as this process's ``/proc`` shows it; None if gone."""
    try:
        proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return describe(proc)
    finally:
        os.close(proc)


def traced(description: tuple[str, ...]) -> bool:
    """Whether a debugger or a ptrace-based sandbox holds the process: no server may take its
    call (a server outside the tracer's reach would escape it, one inside cannot be started)."""
    return TRACED in description


def _namespace(proc: int, kind: str) -> str:
    try:
        return os.readlink(f"ns/{kind}", dir_fd=proc)
    except FileNotFoundError:
        return f"{kind}:none"  # a kind this kernel lacks (``time`` came in 5.6)


def _read(proc: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        return os.read(fd, READ_LIMIT).decode(errors="replace")
    finally:
        os.close(fd)


def _tracer(status: str) -> bool:
    start = status.index("TracerPid:") + len("TracerPid:")
    return int(status[start : status.index("\n", start)]) != 0


def _label(proc: int, name: str) -> str:
    try:
        return _read(proc, name)
    except OSError as exc:
        if exc.errno in NO_LABEL:
            return f"{name}:none"
        raise
