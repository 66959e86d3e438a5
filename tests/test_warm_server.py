"""b24's warm server (README "The warm server"): calls it serves behave exactly like calls run
in-process (output, exit codes, stdin, env, folder, signals), it serves only safely, and it
never runs a call twice. Each test has its own runtime folder, so its own server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from b24agent.cli.warm import confinement, rehearsal
from b24agent.cli.warm import wire as warm_wire
from cli_support import FULL_EXPORT, SCRIPT, Cli, Run, check, interrupt_when_stdout_full
from confine_support import CONFINEMENTS, landlock_works, no_new_privs
from conftest import Sandbox
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

SERVER_START_S = 30


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR (socket paths must fit in 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="b24w-") as folder:
        yield Path(folder)


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path, runtime: Path) -> Cli:
    return Cli(
        tmp_path,
        {
            "B24_WEBHOOK_URL": portal.webhook_url,
            "XDG_RUNTIME_DIR": str(runtime),
            "B24_SERVER_IDLE_SEC": "30",
        },
    )


def _sockets(runtime: Path) -> list[Path]:
    return sorted((runtime / "bitrix24-agent").glob("*.sock"))


def _warm(cli: Cli, runtime: Path) -> None:
    """Make the first (cold) call, then wait until its server listens."""
    assert cli("user.current").code == 0
    deadline = time.monotonic() + SERVER_START_S
    while not _sockets(runtime):
        assert time.monotonic() < deadline, "the warm server did not start"
        time.sleep(0.05)


def _imports(
    cli: Cli, *args: str, preexec: Callable[[], None] | None = None
) -> tuple[Run, set[str]]:
    """Run b24 with -X importtime: what the calling process itself imported. ``preexec`` runs
    in the child before exec (a confinement, see confine_support.py)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=cli.cwd,
        timeout=60,
        preexec_fn=preexec,
    )
    timings = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    other = "".join(f"{line}\n" for line in proc.stderr.splitlines() if line not in timings)
    return Run(proc.returncode, proc.stdout, other), {t.rsplit("|", 1)[-1].strip() for t in timings}


def test_served_calls_leave_a_whole_anchored_audit_chain(cli: Cli, runtime: Path) -> None:
    """A worker moves the audit head after it sent the exit code (guard/deferred.py), still
    under the log's lock: the next call, and --verify-audit, find every head moved."""
    _warm(cli, runtime)
    for _ in range(3):
        assert cli("user.current").code == 0
    report = cli("--verify-audit").json()
    assert (report["ok"], report["anchored"], report["lines"]) == (True, True, 4)
    assert "unanchored" not in report


@pytest.mark.parametrize(
    "args", [("--help",), ("--version",), ("--explain", "crm.lead.add"), ("--list-packs",)]
)
def test_flags_that_only_print_neither_use_nor_start_a_server(
    args: tuple[str, ...], cli: Cli, runtime: Path
) -> None:
    """They never call the portal: the runtime folder (made by the first call that looks for a
    server, see _warm) is never even created, so no server can have been started."""
    run = cli(*args)
    assert run.code == 0 and run.out
    time.sleep(0.5)
    assert not (runtime / "bitrix24-agent").exists()


def _without_timing(document: dict) -> dict:
    return {key: value for key, value in document.items() if key != "time"}


def test_a_served_call_prints_what_an_in_process_call_prints(
    portal: Sandbox, cli: Cli, runtime: Path
) -> None:
    _warm(cli, runtime)
    before = portal.stats()["requests"]
    served, imported = _imports(cli, "user.current")
    check(served)
    assert served.code == 0
    assert "requests" not in imported and "b24agent.cli.client" not in imported  # not run here
    # The caller's own start-up stays near Python's: typing and collections were 10 ms of it.
    assert not {"typing", "collections", "re", "json"} & imported
    assert portal.stats()["requests"] == before + 1  # but it did reach the portal
    in_process = cli("user.current", B24_SERVER="off")
    assert _without_timing(served.json()) == _without_timing(in_process.json())


def test_stdin_exit_codes_and_error_lines_pass_through(
    portal: Sandbox, cli: Cli, runtime: Path
) -> None:
    _warm(cli, runtime)
    lead = portal.rest("crm.lead.add", {"fields": {"TITLE": "via stdin"}}).json()["result"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "crm.lead.get", "--params", "-", "--output", "result"],
        input=json.dumps({"id": lead}),
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=cli.cwd,
        timeout=60,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["TITLE"] == "via stdin", proc.stderr
    missing = cli("crm.lead.get", "--params", '{"id": 99999999}')
    assert missing.code == 1 and missing.out == ""
    assert missing.error()["code"] == "NotFoundError"
    usage = cli("--bogus")
    assert usage.code == 2 and usage.error()["code"] == "USAGE"
    assert len(_sockets(runtime)) == 1  # all of it through the one server


def test_each_call_has_its_own_environment_and_folder(cli: Cli, runtime: Path) -> None:
    _warm(cli, runtime)
    (cli.cwd / "ops.env").write_text("B24_PACKS=no-such-pack\n")  # named relative to the folder
    from_dotenv = cli("user.current", "--env-file", "ops.env")
    assert from_dotenv.code == 4 and "no-such-pack" in from_dotenv.error()["message"]
    from_env = cli("user.current", B24_PACKS="core,also-unknown")
    assert from_env.code == 4 and "also-unknown" in from_env.error()["message"]
    (cli.cwd / "ops.env").unlink()
    assert cli("user.current").code == 0  # nothing of the calls before stayed behind


def test_ctrl_c_and_a_killed_caller_both_interrupt_the_call(
    portal: Sandbox, cli: Cli, runtime: Path
) -> None:
    _warm(cli, runtime)
    portal.admin("faults", {"rules": [{"method": "crm.lead.get", "delay_ms": 5000}]})
    for sig in (signal.SIGINT, signal.SIGKILL):
        before = portal.stats()["requests"]
        proc = cli.popen("crm.lead.get", "--params", '{"id": 1}')
        deadline = time.monotonic() + 30
        while portal.stats()["requests"] == before:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        # SIGINT: the caller waits for the worker's own report. SIGKILL: the worker, holding the
        # caller's stderr, reports the interruption there itself, long before the 5 s answer.
        assert time.monotonic() - started < 4
        assert json.loads(err.strip().splitlines()[-1])["error"]["code"] == "INTERRUPTED"
        assert out == ""
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)


def test_a_signal_the_caller_ignores_is_ignored_by_its_call(
    portal: Sandbox, cli: Cli, runtime: Path
) -> None:
    _warm(cli, runtime)
    portal.admin("faults", {"rules": [{"method": "crm.lead.get", "error": None, "delay_ms": 1500}]})
    lead = portal.rest("crm.lead.add", {"fields": {"TITLE": "nohup"}}).json()["result"]
    before = portal.stats()["requests"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "crm.lead.get", "--params", json.dumps({"id": lead})],
        env=cli.env,
        cwd=cli.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # as under nohup
    )
    deadline = time.monotonic() + 30
    while portal.stats()["requests"] == before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["result"]["TITLE"] == "nohup"


def _in_flight(
    portal: Sandbox, cli: Cli, delay_ms: int, method: str, *args: str
) -> tuple[subprocess.Popen[str], int]:
    """``b24 METHOD ARGS`` started with the portal holding its answer ``delay_ms``; returns the
    caller once the request reached the portal, and the pid of the worker serving it."""
    portal.admin("faults", {"rules": [{"method": method, "delay_ms": delay_ms}]})
    before = portal.stats()["requests"]
    proc = cli.popen(method, *args)
    deadline = time.monotonic() + 30
    while portal.stats()["requests"] == before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, _process_in(cli.cwd, besides=proc.pid)


def test_a_worker_that_dies_mid_call_is_an_unknown_outcome(
    portal: Sandbox, cli: Cli, runtime: Path
) -> None:
    _warm(cli, runtime)
    add = ("--params", '{"fields": {"TITLE": "x"}}', "--confirm-write")
    proc, worker = _in_flight(portal, cli, 5000, "crm.lead.add", *add)
    os.kill(worker, signal.SIGKILL)
    run = cli.finish(proc)
    assert run.code == 7 and run.error()["code"] == "WARM_WORKER_LOST"


def test_a_taken_worker_is_replaced_when_its_call_is_over_not_while_it_runs(
    portal: Sandbox, cli: Cli, runtime: Path
) -> None:
    """The successor's start (a fork and a whole rehearsal call) would compete with the call."""
    _warm(cli, runtime)
    proc, worker = _in_flight(portal, cli, 1500, "crm.lead.get", "--params", '{"id": 1}')
    server = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
    during = _children(server)
    cli.finish(proc)
    assert worker in during and len(during) == 2, during  # the call's worker and one spare
    deadline = time.monotonic() + 10
    while worker in _children(server) or len(_children(server)) != 2:
        assert time.monotonic() < deadline, _children(server)
        time.sleep(0.05)


def _server_pid(runtime: Path, where: Path | None = None) -> int:
    """The warm server's parent: the process that listens on the socket (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(where or _sockets(runtime)[0]))
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[:4], sys.byteorder)


def _rehearsing(server: int) -> tuple[int, Path] | None:
    """A spare of ``server`` caught rehearsing: its pid and its throwaway folder (its cwd)."""
    for child in _children(server):
        try:
            folder = Path(os.readlink(f"/proc/{child}/cwd"))
        except OSError:
            continue
        if folder.parent == Path(rehearsal.SCRATCH):
            return child, folder
    return None


needs_scratch = pytest.mark.skipif(
    not os.access(rehearsal.SCRATCH, os.W_OK | os.X_OK), reason="rehearsals use the temp folder"
)


@needs_scratch
def test_a_spare_killed_while_it_rehearses_leaves_no_folder(cli: Cli, runtime: Path) -> None:
    """A taken spare's successor rehearses once the call is over; killed then, its folder used
    to stay in /dev/shm for good. The server, reaping it, removes it."""
    _warm(cli, runtime)
    server = _server_pid(runtime)
    caught = None
    for _ in range(20):
        assert cli("user.current").code == 0
        deadline = time.monotonic() + 2
        while caught is None and time.monotonic() < deadline:
            caught = _rehearsing(server)
        if caught is not None:
            break
    assert caught is not None, "no spare was seen rehearsing"
    spare, folder = caught
    os.kill(spare, signal.SIGKILL)
    deadline = time.monotonic() + 10  # a spare dying without a call stops the server
    while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{server}").exists()
    assert not folder.exists(), sorted(folder.rglob("*"))


@needs_scratch
def test_a_starting_server_removes_folders_only_of_processes_gone(cli: Cli, runtime: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = Path(rehearsal.SCRATCH, f"{rehearsal.PREFIX}{dead.pid}-test")
    running = Path(rehearsal.SCRATCH, f"{rehearsal.PREFIX}{os.getpid()}-test")
    try:
        for folder in (left, running):
            folder.mkdir()
            (folder / "limiter.json").write_text("{}")
        _warm(cli, runtime)
        deadline = time.monotonic() + SERVER_START_S  # it listens first, then warms up
        while left.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left.exists()
        assert (running / "limiter.json").exists()  # this test's process still runs
    finally:
        for folder in (left, running):
            shutil.rmtree(folder, ignore_errors=True)


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def _process_in(folder: Path, *, besides: int) -> int:
    """The one process but ``besides`` (the caller) whose working folder is ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != besides:
            try:
                if Path(os.readlink(entry / "cwd")) == folder.resolve():
                    found.append(int(entry.name))
            except OSError:
                continue
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("name", sorted(CONFINEMENTS))
def test_a_sandboxed_call_runs_in_its_sandbox_not_in_a_server_started_outside(
    name: str, portal: Sandbox, cli: Cli, runtime: Path
) -> None:
    """Review 7 H2: a caller under a seccomp filter refusing network sockets, or Landlock
    refusing file writes (each with no_new_privs, as Codex confines commands), handed its write
    to the server the person's own call had started, and the write ran there: exit 0, a lead
    made. Now it runs in its own process and meets its sandbox, as with B24_SERVER=off."""
    confine, code, exit_code = CONFINEMENTS[name]
    if name == "no-writes" and not landlock_works():
        pytest.skip("this kernel has no Landlock")
    _warm(cli, runtime)
    before = portal.stats()["requests"]
    add = ("crm.lead.add", "--params", '{"fields": {"TITLE": "sandboxed"}}', "--confirm-write")
    run, imported = _imports(cli, *add, preexec=confine)
    assert run.code == exit_code and run.error()["code"] == code, run.err
    assert "b24agent.cli.client" in imported  # it ran in the caller's own process
    assert portal.stats()["requests"] == before  # nothing reached the portal
    if name == "no-writes":  # no server can make its socket there: none is started to fail
        assert "subprocess" not in imported
    served, imported = _imports(cli, "user.current")  # the person's own calls keep the server
    assert served.code == 0 and "b24agent.cli.client" not in imported


#: A process that writes its own request frame to the socket ``sys.argv[1]`` (a user.current
#: call, with this process's stdio) and prints what the server answers: READY or closed.
INJECTED = """
import socket, sys
sys.path.insert(0, sys.argv[2])
from b24agent.cli.warm import wire
conn = socket.socket(socket.AF_UNIX)
conn.connect(sys.argv[1])
frame = wire.encode_request(["b24", "user.current"], {}, "/", 0o077, [])
try:
    socket.send_fds(conn, [frame], [0, 1, 2])
    print("READY" if conn.recv(1) == wire.READY else "closed")
except OSError:  # the server closed first
    print("closed")
"""


def test_the_server_reads_who_connects_and_refuses_a_confined_process(
    cli: Cli, runtime: Path
) -> None:
    """The socket's name keeps a sandboxed b24 away from a server outside its sandbox, but any
    process of the user may connect to the socket and write its own frame: the worker reads the
    connecting process from the kernel and closes before READY (so nothing runs) unless it is
    confined as the server is. no_new_privs alone is enough to differ."""
    _warm(cli, runtime)
    answers = {}
    for name, preexec in (("unconfined", None), ("no_new_privs", no_new_privs)):
        injected = subprocess.run(
            [sys.executable, "-c", INJECTED, str(_sockets(runtime)[0]), str(SCRIPT.parent)],
            preexec_fn=preexec,
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        answers[name] = injected.stdout.strip() or injected.stderr
    assert answers == {"unconfined": "READY", "no_new_privs": "closed"}


def test_a_sandboxed_caller_keeps_the_warm_path_with_a_server_in_its_sandbox(
    cli: Cli, runtime: Path
) -> None:
    """Its socket's name tells its confinement, so its first call starts a server inside its
    sandbox (inheriting it) and its next calls are served there."""
    _warm(cli, runtime)
    outside = set(_sockets(runtime))
    assert cli.finish(cli.popen_with(no_new_privs, "user.current")).code == 0
    deadline = time.monotonic() + SERVER_START_S
    while len(_sockets(runtime)) < 2:
        assert time.monotonic() < deadline, "no server started in the sandbox"
        time.sleep(0.05)
    (inside,) = set(_sockets(runtime)) - outside
    status = Path(f"/proc/{_server_pid(runtime, inside)}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    served, imported = _imports(cli, "user.current", preexec=no_new_privs)
    assert served.code == 0 and "b24agent.cli.client" not in imported


def test_a_host_with_an_lsm_label_keeps_the_warm_path(
    cli: Cli, runtime: Path, tmp_path: Path
) -> None:
    """On AppArmor or SELinux hosts /proc/PID/attr/current is readable (review7b H-a: it was
    decoded twice and every b24 start ended in a traceback). This host has no LSM, so each
    process here reads its ``comm`` as its label instead (a sitecustomize, in the caller and,
    through the environment, in the server it starts): calls still succeed, and are served."""
    hook = tmp_path / "lsm"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "from b24agent.cli.warm import confinement\n"
        "confinement.LABELS = ('comm', *confinement.LABELS[1:])\n"
    )
    cli.env["PYTHONPATH"] = f"{hook}{os.pathsep}{SCRIPT.parent}"
    _warm(cli, runtime)
    served, imported = _imports(cli, "user.current")
    check(served)
    assert served.code == 0 and "b24agent.cli.client" not in imported


def test_off_or_an_unsafe_folder_keeps_every_call_in_process(cli: Cli, runtime: Path) -> None:
    assert cli("user.current", B24_SERVER="off").code == 0
    assert cli("user.current", B24_SERVER="off").code == 0
    time.sleep(1)
    assert _sockets(runtime) == []
    (runtime / "bitrix24-agent").mkdir()
    (runtime / "bitrix24-agent").chmod(0o777)  # as if another user could enter it
    assert cli("user.current").code == 0
    assert cli("user.current").code == 0
    time.sleep(1)
    assert _sockets(runtime) == []
    assert warm_wire.private_folder({"XDG_RUNTIME_DIR": str(runtime)}) is None


def test_a_code_change_gives_a_new_socket(tmp_path: Path) -> None:
    package = tmp_path / "b24agent"
    package.mkdir()
    module = package / "client.py"
    module.write_text("x = 1\n")
    first = warm_wire.code_stamp(str(package))
    assert warm_wire.code_stamp(str(package)) == first
    os.utime(module, ns=(1, 1))
    assert warm_wire.code_stamp(str(package)) != first


def test_the_stamp_leaves_out_only_modules_the_server_never_imports(tmp_path: Path) -> None:
    package = tmp_path / "b24agent"
    for folder in ("sandbox/methods", "cli", "backends"):
        (package / folder).mkdir(parents=True)
    served = [package / "cli" / "client.py", package / "backends" / "redis_scripts.py"]
    unserved = [
        package / "sandbox" / "methods" / "crm.py",
        package / "cli" / "demo.py",
        package / "backends" / "redis_store.py",
    ]
    for module in [*served, *unserved]:
        module.write_text("x = 1\n")
    first = warm_wire.code_stamp(str(package))
    for module in unserved:  # read from disk by any call that needs them: no stale code
        os.utime(module, ns=(1, 1))
    assert warm_wire.code_stamp(str(package)) == first
    for module in served:
        os.utime(module, ns=(2, 2))
        assert warm_wire.code_stamp(str(package)) != first
        first = warm_wire.code_stamp(str(package))


def test_the_warm_server_imports_none_of_the_modules_the_stamp_leaves_out() -> None:
    """What makes leaving them out of the stamp safe: a warm server never holds their code."""
    code = (
        "import sys; from b24agent.cli.warm import server; server.warm_up(); "
        "print([m for m in sys.modules if m.startswith(server.NOT_FOR_CALLS)])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_warm_server_starts_where_only_requirements_txt_is_installed() -> None:
    """A skill folder set up with ``pip install -r requirements.txt`` has no MCP packages
    (requirements-mcp.txt): the server must still start, or every call runs cold and starts a
    server that dies again."""
    code = (
        "import sys; sys.modules.update(mcp=None, pydantic=None); "
        "from b24agent.cli.warm import server; server.warm_up(); print('warm')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "warm"), done.stderr[-400:]


def _blocking(cli: Cli, tmp_path: Path, module: str, error: str) -> tuple[Cli, Path]:
    """``cli`` whose processes, and the warm server they start (it inherits PYTHONPATH), fail
    to import ``module`` with ``error`` (an expression), as on a host that lacks it; and the
    file that gets a line for each attempt, i.e. for each process that tried."""
    site, tried = tmp_path / "site", tmp_path / "tried.log"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        f"            with open({str(tried)!r}, 'a') as log:\n"
        "                log.write('tried\\n')\n"
        f"            raise {error}\n"
        "sys.meta_path.insert(0, _Missing())\n"
    )
    paths = [str(site), *filter(None, [cli.env.get("PYTHONPATH")])]
    return cli.with_env(PYTHONPATH=os.pathsep.join(paths)), tried


def _servers_running(runtime: Path) -> list[int]:
    """The warm servers started for ``runtime`` still running (the socket is in their command)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and str(runtime).encode() in command:
            found.append(int(entry.name))
    return found


def _until_no_server(runtime: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while _servers_running(runtime):
        assert time.monotonic() < deadline, "a warm server did not end"
        time.sleep(0.05)


def _served(cli: Cli, *args: str) -> Run:
    """Run ``args`` and check the warm server served it (this process never loaded the CLI)."""
    run, imported = _imports(cli, *args)
    assert "b24agent.cli.client" not in imported, run.err
    return run


@needs_scratch
def test_a_folder_any_user_names_like_a_rehearsal_does_not_stop_the_server(
    cli: Cli, runtime: Path
) -> None:
    """/dev/shm is world-writable. Before, ``mkdir b24-rehearsal-99999999999999999999999-x``
    by any user made the starting server's sweep raise (OverflowError in os.kill), and every
    user's server died after binding its socket: every call ran cold."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    planted = [
        Path(rehearsal.SCRATCH, f"{rehearsal.PREFIX}{'9' * 23}-x"),
        Path(rehearsal.SCRATCH, f"{rehearsal.PREFIX}{2**22 + 1}-x"),
    ]
    others = Path(rehearsal.SCRATCH, f"{rehearsal.PREFIX}{dead.pid}-other")
    try:
        for folder in planted:
            folder.mkdir()
        others.mkdir()
        if os.geteuid() == 0:  # as another user's would be: never removed
            os.chown(planted[0], 65534, 65534)
            os.chown(others, 65534, 65534)
        _warm(cli, runtime)
        assert _served(cli, "user.current").code == 0
        assert _served(cli, "user.current").code == 0
        assert all(folder.exists() for folder in planted)
        assert others.exists() or os.geteuid() != 0
    finally:
        for folder in [*planted, others]:
            shutil.rmtree(folder, ignore_errors=True)


def test_a_server_that_dies_warming_up_leaves_no_socket_and_is_not_started_again_at_once(
    cli: Cli, runtime: Path, tmp_path: Path
) -> None:
    """Before, the socket stayed bound to nobody: each call was refused, ran cold, and started
    another server that died the same way (a whole import of the stack, every call). Now the
    socket is removed and the next start waits wire.RESTART_AFTER_S; calls still run, cold."""
    broken, tried = _blocking(cli, tmp_path, "b24agent.cli.install", "RuntimeError('broken')")
    assert broken("user.current").code == 0  # cold; starts a server
    deadline = time.monotonic() + SERVER_START_S
    while not tried.exists() or _servers_running(runtime):
        assert time.monotonic() < deadline, "the server neither died nor served"
        time.sleep(0.05)
    assert _sockets(runtime) == []
    for _ in range(3):
        run = broken("user.current")
        assert run.code == 0, run.err
    _until_no_server(runtime)  # any started by those calls (each one's start precedes its run)
    assert tried.read_text().splitlines() == ["tried"]


def test_a_python_without_ctypes_is_served_warm_and_installs_the_skill(
    cli: Cli, runtime: Path, tmp_path: Path
) -> None:
    """A Python built without libffi (pyenv on a host lacking libffi-dev) has no _ctypes.
    Before, the warm server died importing cli/install.py (every call cold), and
    ``--install-skill`` ended in INTERNAL_ERROR, "a bug"; without renameat2 it now swaps an
    earlier copy by two renames."""
    plain, _ = _blocking(
        cli, tmp_path, "_ctypes", "ModuleNotFoundError(\"No module named '_ctypes'\")"
    )
    _warm(plain, runtime)
    assert _served(plain, "user.current").code == 0
    skills = tmp_path / "skills"
    for _ in range(2):  # a first copy, then one over it
        run = plain("--install-skill", str(skills))
        assert run.code == 0, run.err
        assert (skills / "bitrix24-agent" / "SKILL.md").is_file()
    assert sorted(p.name for p in skills.iterdir()) == ["bitrix24-agent"]


def test_a_package_missing_is_reported_by_a_served_call_as_in_process(
    cli: Cli, runtime: Path, tmp_path: Path
) -> None:
    """A module whose import fails for want of a package is left out of the warm-up (before,
    the server died on it); a call that needs it imports it from disk and gets the documented
    one-line error, exit 4, word for word as in-process."""
    lacking, _ = _blocking(cli, tmp_path, "jsonschema", "ModuleNotFoundError(name='jsonschema')")
    alone = lacking("user.current", B24_SERVER="off")
    assert alone.code == 4 and alone.error()["code"] == "DEPENDENCY_MISSING", alone.err
    assert lacking("user.current").code == 4  # cold; starts a server
    deadline = time.monotonic() + SERVER_START_S
    while not _sockets(runtime):
        assert time.monotonic() < deadline, "the warm server did not start"
        time.sleep(0.05)
    served = _served(lacking, "user.current")
    assert (served.code, served.out, served.err) == (alone.code, alone.out, alone.err)


_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))


@given(
    argv=st.lists(_text, min_size=1, max_size=6),
    env=st.dictionaries(
        st.text(
            st.characters(blacklist_characters="\0=", blacklist_categories=("Cs",)), min_size=1
        ),
        _text,
        max_size=6,
    ),
    cwd=_text,
    umask=st.integers(0, 0o777),
    ignored=st.lists(st.sampled_from([1, 2, 15]), unique=True),
)
def test_requests_decode_to_what_was_encoded(
    argv: list[str], env: dict[str, str], cwd: str, umask: int, ignored: list[int]
) -> None:
    frame = warm_wire.encode_request(argv, env, cwd, umask, ignored)
    assert warm_wire.frame_length(frame) == len(frame) - 4
    got = warm_wire.decode_request(frame[4:])
    assert (got.argv, got.env, got.cwd, got.umask, got.ignored) == (argv, env, cwd, umask, ignored)


def _fake_proc(root: Path, label: str | None) -> int:
    """A /proc/PID folder as the kernel shows one, ``attr/current`` holding ``label``."""
    (root / "ns").mkdir(parents=True)
    for kind in confinement.NAMESPACES:
        os.symlink(f"{kind}:[4026531835]", root / "ns" / kind)
    os.symlink("/", root / "root")
    (root / "cgroup").write_text("0::/user.slice\n")
    (root / "status").write_text("Name:\tpython3\nTracerPid:\t0\nUid:\t1000\nNoNewPrivs:\t0\n")
    (root / "attr").mkdir()
    if label is not None:
        (root / "attr" / "current").write_text(label)
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY)


@pytest.mark.parametrize("label", ["unconfined\n", "system_u:system_r:unconfined_t:s0\x00"])
def test_a_readable_lsm_label_is_part_of_the_description(tmp_path: Path, label: str) -> None:
    """The label is read as text and kept whole, so two processes that differ only by their
    AppArmor profile or SELinux context differ; without the file the LSM is absent."""
    labelled, bare = _fake_proc(tmp_path / "a", label), _fake_proc(tmp_path / "b", None)
    try:
        with_label, without = confinement.describe(labelled), confinement.describe(bare)
    finally:
        os.close(labelled)
        os.close(bare)
    assert with_label is not None and without is not None
    assert label in with_label and "attr/current:none" in without
    assert with_label != without


# --- an interruption ends an export whose stdout nobody reads (review7b M-b) ---------------------


@pytest.mark.parametrize("server", ["off", "on"])
def test_ctrl_c_ends_an_export_whose_stdout_is_full(
    portal: Sandbox, cli: Cli, runtime: Path, server: str
) -> None:
    """An export of 1,500 leads fills a stdout pipe nobody reads, then Ctrl-C. Before, the
    printer's thread sat in the full pipe holding its lock and the interrupted call waited for
    it: still running 20 s after the signal. Now it ends 130 with the one error line."""
    portal.admin("seed", {"crm.lead": 1500})
    if server == "on":
        _warm(cli, runtime)
    proc = cli.popen(*FULL_EXPORT, B24_SERVER=server)
    run = interrupt_when_stdout_full(proc, signal.SIGINT)
    check(run)
    assert run.error()["code"] == "INTERRUPTED" and len(run.err.splitlines()) == 1, run.err


def test_a_worker_takes_the_callers_environment_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set by difference (worker._take_environment): what only the server had is gone, what
    differs is the caller's, what the caller adds is there."""
    from b24agent.cli.warm import worker

    monkeypatch.delenv("ONLY_THE_CALLERS", raising=False)  # put back as absent afterwards
    monkeypatch.setenv("ONLY_THE_SERVERS", "1")
    monkeypatch.setenv("BOTH_DIFFER", "server")
    caller = {**os.environ, "BOTH_DIFFER": "caller", "ONLY_THE_CALLERS": "2"}
    del caller["ONLY_THE_SERVERS"]
    worker._take_environment(dict(caller))
    assert dict(os.environ) == caller
