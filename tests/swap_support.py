"""Another user against the warm server's socket folder; run as a script (as root) by
test_warm_boundary.py: ``python swap_support.py MODE`` prints one JSON line of counts.

Another user (uid 65534, by os.setuid in forked children) may write the folder that holds our
warm-server folder. Its impostor server listens under our socket's name in a folder of its own.
Our own "server" (a thread) counts the calls it receives; ``CALLS`` calls go through launch.py's
client side. Modes:

- ``race``: a swapper renames the two folders back and forth every 2 ms, blindly.
- ``between``: the swapper puts the impostor's folder in place exactly between the caller's
  check of the folder and its connect (the code stamp is computed in between), every call.
- ``planted``: the impostor's listening socket is moved into our own folder under our name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from b24agent.cli.warm import launch, wire

CALLS = 100
OTHER_UID = 65534
#: How long each folder stays in place in ``race`` mode.
SWAP_EVERY_S = 0.002


def _count_senders(listener: socket.socket, stop: threading.Event) -> int:
    """Accept until stopped; count connections that delivered at least one byte."""
    listener.settimeout(0.05)
    received = 0
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                if conn.recv(65536):
                    received += 1
    return received


def _as_other_user(job: Callable[[int], int]) -> tuple[int, int, int]:
    """Fork a child running ``job(commands_fd)`` as OTHER_UID; returns its pid, the write end
    of its command pipe and the read end of its result pipe."""
    commands_r, commands_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(commands_r)
        os.close(result_w)
        return pid, commands_w, result_r
    os.close(commands_w)
    os.close(result_r)
    try:
        os.setgid(OTHER_UID)
        os.setuid(OTHER_UID)
        os.write(result_w, str(job(commands_r)).encode())
    finally:
        os._exit(0)


class Scene:
    """The shared folder, our folder and socket, and the other user's folder and socket."""

    def __init__(self) -> None:
        self.parent = tempfile.mkdtemp(prefix="b24swap-", dir="/tmp")
        os.chmod(self.parent, 0o777)  # the premise: another user may rename entries here
        self.env = {"XDG_RUNTIME_DIR": self.parent}
        os.environ.update(self.env)
        self.real = wire.private_folder(self.env) or ""
        self.path = wire.address(self.env) or ""
        self.name = os.path.basename(self.path)
        self.impostor_dir = os.path.join(self.parent, "impostor")
        self.aside = os.path.join(self.parent, "aside")

    def swap_in(self) -> None:
        for source, target in ((self.real, self.aside), (self.impostor_dir, self.real)):
            with contextlib.suppress(OSError):
                os.rename(source, target)

    def swap_back(self) -> None:
        for source, target in ((self.real, self.impostor_dir), (self.aside, self.real)):
            with contextlib.suppress(OSError):
                os.rename(source, target)

    def impostor(self, _commands: int) -> int:
        os.mkdir(self.impostor_dir, 0o755)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(self.impostor_dir, self.name))
        listener.listen(128)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        return _count_senders(listener, stop)

    def race(self, _commands: int) -> int:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        while True:
            time.sleep(SWAP_EVERY_S)
            self.swap_in()
            time.sleep(SWAP_EVERY_S)
            self.swap_back()

    def on_command(self, commands: int) -> int:
        """Swap in on ``i``, back on ``b``, one byte of acknowledgement each (stdout's pipe)."""
        while command := os.read(commands, 1):
            self.swap_in() if command == b"i" else self.swap_back()
        return 0


def main(mode: str) -> None:
    scene = Scene()
    impostor_pid, _, impostor_result = _as_other_user(scene.impostor)
    while not os.path.exists(os.path.join(scene.impostor_dir, scene.name)):
        time.sleep(0.01)
    ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.bind(scene.path)
    ours.listen(128)
    stop = threading.Event()
    counted: list[int] = []
    thread = threading.Thread(target=lambda: counted.append(_count_senders(ours, stop)))
    thread.start()

    helper = None
    if mode == "planted":
        os.replace(os.path.join(scene.impostor_dir, scene.name), scene.path)
    elif mode == "race":
        helper = _as_other_user(scene.race)
    elif mode == "between":
        helper = _as_other_user(scene.on_command)
        commands = helper[1]
        stamp = wire.code_stamp

        def stamp_then_swap(*args: Any, **kwargs: Any) -> str:  # between check and connect
            result = stamp(*args, **kwargs)
            os.write(commands, b"i")
            time.sleep(0.005)  # the other user's renames land before the connect
            return result

        wire.code_stamp = stamp_then_swap

    launch._start_server = lambda *_: None  # no real server: the two above are the servers
    for _ in range(CALLS):
        where = wire.dial(scene.env)
        if where is not None:
            launch.ServedCall(where[0], through=where[1]).run()
        if mode == "between":
            os.write(commands, b"b")
            time.sleep(0.005)
    if helper is not None:
        os.kill(helper[0], signal.SIGTERM)
        os.close(helper[1])
        os.waitpid(helper[0], 0)
    os.kill(impostor_pid, signal.SIGTERM)
    os.waitpid(impostor_pid, 0)
    stop.set()
    thread.join()
    reached_impostor = int(os.read(impostor_result, 64) or b"0")
    shutil.rmtree(scene.parent, ignore_errors=True)
    report = {"mode": mode, "calls": CALLS, "impostor": reached_impostor, "ours": counted[0]}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
