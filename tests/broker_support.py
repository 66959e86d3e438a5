"""Real OS accounts for the broker tests: an operator who runs ``b24-broker``, an agent, and the
user an operator runs the offline worker as.

CI runs as root, so the tests create them (``useradd``) and remove them afterwards: the operator
(primary group ``ops``, also in ``agents`` so its broker can give that group the call socket),
the agent and the worker (only in ``agents``). Every process of theirs runs with their uid and
groups through ``subprocess``'s ``user=``/``group=``/``extra_groups=``; nothing they run inherits
the test's environment.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli_support import SCRIPT, Run, check
from conftest import Sandbox

START_TIMEOUT_S = 30.0
PATH = "/usr/local/bin:/usr/bin:/bin"


def _others_can_run(path: str) -> bool:
    """Whether a user other than the owner may execute ``path`` (every folder on the way too)."""
    real = Path(os.path.realpath(path))
    try:
        return all(os.stat(part).st_mode & 0o001 for part in (real, *real.parents))
    except OSError:
        return False


def _interpreter() -> tuple[str, dict[str, str]] | None:
    """A Python the test's users may run, and the environment that finds our packages: this
    one, or else the system's of the same version with this environment's site-packages (a
    pyenv interpreter under /root is closed to other users)."""
    if _others_can_run(sys.executable):
        return sys.executable, {}
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not _others_can_run(system):
        return None
    paths = sysconfig.get_paths()
    found = list(dict.fromkeys([str(SCRIPT.parent), paths["purelib"], paths["platlib"]]))
    if not all(_others_can_run(path) or _open_temp_folders(path) for path in found):
        return None
    return system, {"PYTHONPATH": os.pathsep.join(found)}


def _open_temp_folders(path: str) -> bool:
    """Let other users pass through (search, not list: o+x) the folders above ``path`` that
    stop them, when those are temporary folders made for this checkout (CI clones into a 0700
    ``mktemp -d``); elsewhere (a home folder) nothing is changed and the tests are skipped."""
    if os.geteuid() != 0:
        return False
    temp = Path(tempfile.gettempdir()).resolve()
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        mode = os.stat(folder).st_mode
        if mode & 0o001:
            continue
        if temp not in folder.parents:
            return False
        os.chmod(folder, (mode & 0o7777) | 0o001)
    return _others_can_run(path)


PYTHON = _interpreter()


def can_make_users() -> bool:
    return os.geteuid() == 0 and shutil.which("useradd") is not None and PYTHON is not None


def _python() -> tuple[str, dict[str, str]]:
    assert PYTHON is not None
    return PYTHON


def _sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@dataclass
class Accounts:
    """The two users, their groups and a folder tree both can traverse."""

    base: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def operator(self) -> str:
        return f"b24op{self.suffix}"

    @property
    def agent(self) -> str:
        return f"b24ag{self.suffix}"

    @property
    def worker(self) -> str:
        return f"b24wk{self.suffix}"

    @property
    def intruder(self) -> str:
        """A second agent's account (in the agents' group too)."""
        return f"b24in{self.suffix}"

    @property
    def ops(self) -> str:
        return f"b24ops{self.suffix}"

    @property
    def agents(self) -> str:
        return f"b24agents{self.suffix}"

    @property
    def agent_home(self) -> Path:
        return self.base / "agent-home"

    @property
    def worker_home(self) -> Path:
        return self.base / "worker-home"

    @classmethod
    def create(cls) -> Accounts:
        base = Path(tempfile.mkdtemp(prefix="b24brk-"))
        base.chmod(0o755)
        accounts = cls(base)
        _sh("groupadd", accounts.ops)
        _sh("groupadd", accounts.agents)
        nologin = shutil.which("nologin") or "/bin/false"
        for user, primary in (
            (accounts.operator, accounts.ops),
            (accounts.agent, accounts.agents),
            (accounts.worker, accounts.agents),
            (accounts.intruder, accounts.agents),
        ):
            _sh("useradd", "--no-create-home", "--shell", nologin, "-g", primary, user)
        _sh("usermod", "-a", "-G", accounts.agents, accounts.operator)
        accounts.owned_folder(accounts.agent_home, accounts.agent, 0o700)
        accounts.owned_folder(accounts.worker_home, accounts.worker, 0o700)
        return accounts

    def remove(self) -> None:
        for user in (self.operator, self.agent, self.worker, self.intruder):
            subprocess.run(["userdel", user], capture_output=True, timeout=60)
        for group in (self.ops, self.agents):
            subprocess.run(["groupdel", group], capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)

    def owned_folder(self, path: Path, user: str, mode: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, user, None)
        path.chmod(mode)
        return path

    def as_operator(self) -> dict[str, Any]:
        return {"user": self.operator, "group": self.ops, "extra_groups": [self.agents]}

    def as_agent(self) -> dict[str, Any]:
        return {"user": self.agent, "group": self.agents, "extra_groups": []}

    def as_worker(self) -> dict[str, Any]:
        return {"user": self.worker, "group": self.agents, "extra_groups": []}

    def as_intruder(self) -> dict[str, Any]:
        return {"user": self.intruder, "group": self.agents, "extra_groups": []}


class Broker:
    """``b24-broker serve`` as the operator, on ``portal``, with its own state and sockets."""

    def __init__(
        self,
        accounts: Accounts,
        portal: Sandbox,
        name: str,
        credentials: str | None = None,
        **env: str,
    ) -> None:
        """``credentials``: the env file's text (default: the sandbox's webhook)."""
        self.accounts = accounts
        self.portal = portal
        self.run_dir = accounts.owned_folder(
            accounts.base / f"{name}-run", accounts.operator, 0o755
        )
        self.state = accounts.owned_folder(
            accounts.base / f"{name}-state", accounts.operator, 0o700
        )
        self.socket = self.run_dir / "b24.sock"
        self.admin_socket = self.run_dir / "admin.sock"
        # The credentials in the operator's env file (0600), the rest in the environment.
        self.env_file = accounts.base / f"{name}-broker.env"
        self.env_file.write_text(credentials or f"B24_WEBHOOK_URL={portal.webhook_url}\n")
        shutil.chown(self.env_file, accounts.operator, None)
        self.env_file.chmod(0o600)
        self.env = {
            "PATH": PATH,
            "HOME": str(self.state),
            "B24_STATE_DIR": str(self.state),
            "B24_PACKS": "core",
            "B24_APPROVAL": "writes",
            "B24_APPROVAL_WAIT_SEC": "8",
            "B24_RETRY_BASE_SEC": "0.05",
            **env,
        }
        self.log = accounts.base / f"{name}-broker.log"
        python, self.python_env = _python()
        command = [python, "-m", "b24agent.broker", "serve", "--socket", str(self.socket)]
        command += ["--env-file", str(self.env_file)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "--group", accounts.agents, "--approvers", accounts.ops],
                env={**self.env, **self.python_env},
                cwd=self.state,
                stdout=log,
                stderr=log,
                **accounts.as_operator(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.socket.exists() and self.admin_socket.exists()):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.05)

    @property
    def portal_state(self) -> Path:
        return next(path for path in self.state.iterdir() if path.is_dir())

    @property
    def audit_file(self) -> Path:
        return self.portal_state / "audit.jsonl"

    def worker_pids(self) -> list[int]:
        """Processes the broker forked that are still running (one per call it serves)."""
        parent = str(self.process.pid)
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == parent:
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def admin(
        self, *args: str, who: str = "operator", socket: Path | None = None, **env: str
    ) -> Run:
        """``b24-broker ARGS`` run by the operator (or by the agent, who must fail), on the
        broker's admin socket unless another is named."""
        account = self.accounts.as_operator() if who == "operator" else self.accounts.as_agent()
        python, python_env = _python()
        where = str(socket or self.admin_socket)
        proc = subprocess.run(
            [python, "-m", "b24agent.broker", *args, "--admin-socket", where],
            env={"PATH": PATH, "HOME": "/", **python_env, **env},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            **account,
        )
        run = Run(proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in run.err, run.err
        return run

    def operator_cli(self, *args: str, **env: str) -> Run:
        """``b24 ARGS`` run in-process by the operator with the broker's own settings."""
        python, python_env = _python()
        proc = subprocess.run(
            [python, str(SCRIPT), *args],
            env={
                **self.env,
                "B24_SERVER": "off",
                "B24_AUDIT_KEY_FILE": str(self.state / "audit.key"),  # the broker's default
                "B24_PLAN_KEY_FILE": str(self.state / "plan.key"),
                "B24_ENV_FILE": str(self.env_file),
                **python_env,
                **env,
            },
            cwd=self.state,
            capture_output=True,
            text=True,
            timeout=60,
            **self.accounts.as_operator(),
        )
        run = Run(proc.returncode, proc.stdout, proc.stderr)
        check(run)
        return run

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_file.read_text().splitlines()]


class Agent:
    """The agent's ``b24``: its own uid, B24_BROKER, and an environment that tries to widen
    (``who``: another account's, say the intruder's, with ``home`` its working folder)."""

    def __init__(
        self,
        accounts: Accounts,
        broker: Broker,
        who: dict[str, Any] | None = None,
        home: Path | None = None,
    ) -> None:
        self.accounts = accounts
        self.who = who or accounts.as_agent()
        self.home = home or accounts.agent_home
        self.env = {
            "PATH": PATH,
            "HOME": str(self.home),
            "B24_BROKER": f"unix:{broker.socket}",
            "B24_PACKS": "all",
            "B24_READ_ONLY": "0",
            "B24_APPROVAL": "off",
            "B24_ALLOW_FLAGS": "allow-unlisted,no-audit,no-mask-secrets,no-idempotency",
        }

    def popen(self, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [_python()[0], str(SCRIPT), *args],
            env=self.env,
            cwd=self.home,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **self.who,
        )

    def finish(self, proc: subprocess.Popen[str], timeout: float = 120) -> Run:
        out, err = proc.communicate(timeout=timeout)
        run = Run(proc.returncode, out, err)
        check(run)
        return run

    def __call__(self, *args: str) -> Run:
        return self.finish(self.popen(*args))

    def popen_python(self, code: str) -> subprocess.Popen[str]:
        """Python ``code`` running as the agent, with the agent's environment."""
        return subprocess.Popen(
            [_python()[0], "-c", code],
            env=self.env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **self.who,
        )

    def python(self, code: str) -> Run:
        """Run Python ``code`` as the agent (what its process could read or do)."""
        out, err = (proc := self.popen_python(code)).communicate(timeout=60)
        return Run(proc.returncode, out, err)


def oauth_broker(accounts: Accounts, portal: Sandbox, name: str) -> Broker:
    """A broker holding the sandbox's OAuth app (the offline worker's calls need it) that lets
    the worker's user drain the queue (``B24_BROKER_DRAINERS``)."""
    oauth = portal.oauth
    credentials = "".join(
        f"{key}={value}\n"
        for key, value in (
            ("B24_DOMAIN", portal.url),
            ("B24_AUTH_MODE", "oauth"),
            ("B24_CLIENT_ID", oauth["client_id"]),
            ("B24_CLIENT_SECRET", oauth["client_secret"]),
            ("B24_ACCESS_TOKEN", oauth["access_token"]),
            ("B24_REFRESH_TOKEN", oauth["refresh_token"]),
            ("B24_OAUTH_SERVER", oauth["server"]),
        )
    )
    return Broker(accounts, portal, name, credentials, B24_BROKER_DRAINERS=accounts.worker)


def brokered_worker_env(broker: Broker, portal: Sandbox, home: Path) -> dict[str, str]:
    """What the offline worker run through ``broker`` holds: the broker's socket, the portal's
    address (not a secret) and its own state folder under ``home``; no credential."""
    python_env = _python()[1]
    return {
        "PATH": PATH,
        "HOME": str(home),
        "B24_BROKER": f"unix:{broker.socket}",
        "B24_DOMAIN": portal.url,
        "B24_STATE_DIR": str(home / "state"),
        **python_env,
    }


def hold_calls(agent: Agent, broker: Broker, count: int = 64) -> tuple[subprocess.Popen[str], int]:
    """``count`` calls by ``agent`` that read a stdin it never closes, so each served one holds
    a broker worker until the holder is killed; the holder, and how many were served (the rest
    were closed unserved)."""
    holder = agent.popen_python(
        "import os, socket, sys, time\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "from b24agent.cli.warm import wire\n"
        "stdin, _never_written = os.pipe()\n"
        "null = os.open(os.devnull, os.O_WRONLY)\n"
        "fds = b''.join(fd.to_bytes(4, sys.byteorder) for fd in (stdin, null, null))\n"
        "argv = ['b24', 'crm.lead.list', '--params', '-']\n"
        "held = []\n"
        f"for _ in range({count}):\n"
        "    c = socket.socket(socket.AF_UNIX)\n"
        f"    c.connect({str(broker.socket)!r})\n"
        "    c.settimeout(10)\n"
        "    try:\n"
        "        c.sendmsg([wire.encode_request(argv, {}, '/', 0o077, [])],\n"
        "                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])\n"
        "        ready = c.recv(1) == wire.READY\n"
        "    except TimeoutError:  # left in the backlog: the broker takes no more calls\n"
        "        break\n"
        "    except OSError:  # closed unserved\n"
        "        ready = False\n"
        "    if ready:\n"
        "        c.sendall(wire.GO)\n"
        "        held.append(c)\n"
        "print(len(held), flush=True)\n"
        "time.sleep(300)\n"
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    if not line.strip().isdigit():
        holder.kill()
        raise AssertionError(holder.communicate()[1])
    return holder, int(line)
