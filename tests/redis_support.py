"""A real redis-server for the fleet tests (no tests here): its own temp folder and free port,
loopback only, a password (``requirepass``: the program refuses a Redis that needs none), no
RDB snapshots (``--save ''``); ``aof=True`` keeps an append-only file fsynced on every write,
so a server killed and restarted on the same folder comes back with its data.

Three "hosts" of one fleet are three state folders and working folders on this machine, each
process started with its host's environment and the one Redis URL.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

__all__ = ["RedisServer", "host_env", "require_redis_server"]


def require_redis_server() -> str:
    """redis-server's path; skips the test without it (fails under CI_REQUIRE_REDIS=1)."""
    found = shutil.which("redis-server")
    if found is None:
        if os.environ.get("CI_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed (.ci/run installs it with apt)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server subprocess; ``kill`` (SIGKILL) and ``start`` again keep port and folder."""

    def __init__(self, folder: Path, *, aof: bool = False, requirepass: bool = True) -> None:
        self.binary = require_redis_server()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        #: None: a Redis open to every local user (its URL still names a made-up password).
        self.password = secrets.token_hex(16) if requirepass else None
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password or 'made-up'}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "always",
            *(["--requirepass", self.password] if self.password else []),
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def host_env(base: dict[str, str], folder: Path, url: str) -> dict[str, str]:
    """The environment of one host: its own state folder and HOME, the fleet's Redis."""
    for sub in ("state", "work"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("B24_")},
        **base,
        "HOME": str(folder),
        "B24_STATE_DIR": str(folder / "state"),
        "B24_STATE_BACKEND": url,
        "B24_SERVER": "off",
    }
