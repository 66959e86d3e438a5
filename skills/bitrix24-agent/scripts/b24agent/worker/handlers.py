"""The three ways to hand an event on, behind one contract: return = done, raise = not done.

Each handler receives the delivery JSON (``Delivery.to_json``: delivery_id, portal, event_name,
attempt, source, process_id, event) and either returns, or raises

- ``RetryableFailure``: try again after a back-off, up to ``--max-retries``, then the DLQ;
- ``PermanentFailure``: the event can never succeed (bad data); straight to the DLQ.

``--handler-cmd CMD``   CMD runs per event (no shell), the JSON on stdin. Exit 0 = done,
                        exit 65 (EX_DATAERR from sysexits.h: "the input data was incorrect") =
                        permanent failure, any other exit, a signal or ``--handler-timeout`` =
                        retry. Its stdout is discarded (our stdout carries only the summary);
                        the tail of its stderr goes into retry logs and DLQ reasons.
``--handler MOD:FUNC``  FUNC(delivery: dict) is called in-process; any exception = retry,
                        ``b24agent.worker.PermanentFailure`` = permanent.
``--sink FILE.jsonl``   (default) append the JSON as one line: a durable inbox. Lines are
                        fsynced in groups (``flush``), before the worker records any of them
                        done, so a crash repeats at most the lines of the open group.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import UsageError
from ..state import JsonlWriter
from .delivery import Delivery

__all__ = [
    "PERMANENT_EXIT_CODE",
    "CallableHandler",
    "CommandHandler",
    "Handler",
    "PermanentFailure",
    "RetryableFailure",
    "SinkHandler",
    "build_handler",
]

#: Exit code of a handler command that means "this event can never succeed": EX_DATAERR.
PERMANENT_EXIT_CODE = 65
_TAIL = 300


class PermanentFailure(Exception):
    """Raise from a handler to send the event straight to the DLQ, without retries."""


class RetryableFailure(Exception):
    """The handler did not finish this time; the worker retries with back-off."""


class Handler(Protocol):
    """``buffered`` handlers return before a delivery is durable and make it so in ``flush``;
    the worker records none of their deliveries done before ``flush`` returned."""

    description: str
    buffered: bool

    def __call__(self, delivery: Delivery) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class SinkHandler:
    """Appends each delivery to a JSONL file; ``flush`` fsyncs them, once per group of events
    (one fsync per line was 44% of a drain's wall time)."""

    buffered = True

    def __init__(self, path: Path) -> None:
        self.description = f"sink {path}"
        try:
            self._writer = JsonlWriter(path)
        except OSError as exc:
            raise UsageError(
                f"--sink: cannot open {path}: {exc.strerror or exc}",
                hint="give a writable file path to --sink",
            ) from None

    def __call__(self, delivery: Delivery) -> None:
        try:
            self._writer.append(delivery.to_json(), sync=False)
        except OSError as exc:
            raise RetryableFailure(f"sink write failed: {exc.strerror or exc}") from None

    def flush(self) -> None:
        """fsync every line written so far; OSError when the disk refuses."""
        self._writer.sync()

    def close(self) -> None:
        self._writer.close()


class CommandHandler:
    """Runs a program per event with the delivery JSON on stdin."""

    buffered = False

    def __init__(self, command: str, timeout: float) -> None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--handler-cmd: cannot parse the command: {exc}") from None
        if not argv:
            raise UsageError("--handler-cmd: the command is empty")
        if shutil.which(argv[0]) is None:
            raise UsageError(
                f"--handler-cmd: program {argv[0]!r} not found or not executable",
                hint="give a full path or a program on PATH; the command runs without a shell",
            )
        self.description = f"command {Path(argv[0]).name}"
        self._argv = argv
        self._timeout = timeout

    def __call__(self, delivery: Delivery) -> None:
        payload = json.dumps(delivery.to_json(), ensure_ascii=False).encode("utf-8")
        # A session of its own: a Ctrl-C meant for the worker must not kill the event it is
        # finishing, and a timeout must kill the handler's children too.
        proc = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(payload, timeout=self._timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise RetryableFailure(f"handler timed out after {self._timeout:g}s") from None
        if proc.returncode == 0:
            return
        tail = err.decode("utf-8", "replace").strip()[-_TAIL:]
        detail = f"handler exited with {_describe(proc.returncode)}" + (f": {tail}" if tail else "")
        if proc.returncode == PERMANENT_EXIT_CODE:
            raise PermanentFailure(detail)
        raise RetryableFailure(detail)

    def flush(self) -> None:
        """Each event was finished when its command exited."""

    def close(self) -> None:
        """Nothing is kept open between events."""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"code {returncode}"


class CallableHandler:
    """Calls ``module:function`` in-process with the delivery JSON as a dict."""

    buffered = False

    def __init__(self, spec: str) -> None:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise UsageError(
                f"--handler: {spec!r} is not MODULE:FUNCTION",
                hint="e.g. --handler myapp.events:handle (the module is imported from the "
                "current folder or the Python path)",
            )
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())  # like `python -m`: the working folder is importable
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise UsageError(
                f"--handler: cannot import {module_name}: {type(exc).__name__}: {exc}"
            ) from None
        for part in attr.split("."):
            target = getattr(target, part, None)
        if not callable(target):
            raise UsageError(f"--handler: {spec} is not a function in {module_name}")
        self.description = f"callable {spec}"
        self._func: Callable[[dict[str, Any]], Any] = target

    def __call__(self, delivery: Delivery) -> None:
        try:
            self._func(delivery.to_json())
        except PermanentFailure:
            raise
        except Exception as exc:
            raise RetryableFailure(f"{type(exc).__name__}: {exc}"[:_TAIL]) from exc

    def flush(self) -> None:
        """The function's return is its promise that the event is done."""

    def close(self) -> None:
        """Nothing is kept open between events."""


def build_handler(
    *, command: str | None, function: str | None, sink: Path, timeout: float
) -> Handler:
    """The handler the flags ask for; a sink when neither a command nor a function is given."""
    if command is not None:
        return CommandHandler(command, timeout)
    if function is not None:
        return CallableHandler(function)
    return SinkHandler(sink)
