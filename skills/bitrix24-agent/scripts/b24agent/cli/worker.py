"""``b24-offline-worker`` / ``offline_sync_worker.py``: drain the portal's offline event queue.

Flags in, one JSON summary line out on stdout at exit; logs and the one-line error on stderr.
The work itself lives in ``b24agent.worker``; this module wires settings, the client, the lock,
the checkpoint, the handler and signals together and maps failures to exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .. import __version__
from .common import (
    JsonErrorParser,
    as_b24_error,
    default_mask,
    positive_int,
    program,
    quiet_if_reader_left,
)
from .output import dump_line

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["build_parser", "main"]

_log = logging.getLogger("b24agent.worker")

#: Rows per reservation. Measured on the sandbox (bench/bench_worker_drain.py, 100,000 events,
#: standard plan, 50 ms): 1,000 took 28.7 s (bound by the bucket: 102 requests), 2,000 20.3 s,
#: 5,000 15.1 s; unlimited plan 5,300 / 11,100 / 14,200 events/s. Each reservation costs a
#: request and three fsyncs; 5,000 rows are ~1.5 MB per answer and +13 MB of worker memory.
DEFAULT_LIMIT = 5000

DESCRIPTION = """\
Move every event of the portal's offline queue to a handler, losing none across crashes.
Rows are reserved with event.offline.get clear=0; the process_id and rows are checkpointed
before any event is handled; handled rows are cleared (in one request with the next
reservation), failed ones retried with back-off and then written to the DLQ and flagged with
event.offline.error. Needs OAuth app auth (an admin
user) and the rest_offline_extended feature."""

EPILOG = """\
handler contract:
  Each event is handed over as one JSON object:
    {"delivery_id", "portal", "event_name", "attempt", "source", "process_id",
     "event": {"ID", "TIMESTAMP_X", "EVENT_NAME", "EVENT_DATA", "EVENT_ADDITIONAL", "MESSAGE_ID"}}
  delivery_id is the same on every delivery of the same row: delivery is at least once (a
  crash between a handler finishing and the checkpoint repeats that one event; with --sink,
  the reservation's lines not yet fsynced and checkpointed), so a handler that remembers
  applied ids is exactly-once.
  --handler-cmd CMD     the JSON on stdin (no shell). exit 0 = done; exit 65 (EX_DATAERR) =
                        permanent failure, straight to the DLQ; any other exit code, a signal or
                        --handler-timeout = retry. stdout is discarded; the stderr tail is logged.
  --handler MOD:FUNC    FUNC(delivery: dict) in-process; returning = done; raising
                        b24agent.worker.PermanentFailure = DLQ; any other exception = retry.
  --sink FILE.jsonl     (default) append the JSON as a line: a durable inbox, fsynced once
                        per reservation before any of its events is checkpointed as done.

files (default folder: $B24_STATE_DIR/<portal>/offline-worker/):
  checkpoint.json (+ .journal)  reservations and outcomes; never edit while a worker runs
  dlq.jsonl                     dead letters: {"status": "dead", ...}; a later
                                {"status": "replayed", "delivery_id"} line closes an entry
  inbox.jsonl                   the default sink
  worker.lock                   one worker per portal and state folder

exit codes:
  0    finished: --once/--drain done, --replay-dlq done, or stopped by SIGTERM/SIGINT (the
       event in hand finishes, done events are cleared, the rest stays checkpointed)
  1    the portal refused (ACCESS_DENIED: user is not an admin; WRONG_LICENSE: the plan lacks
       rest_offline_extended, needed for clear=0)
  2    usage: bad flag, bad --handler / --handler-cmd; --listen through the broker (the
       portal's notices carry the app's OAuth tokens; the worker there polls instead)
  3    the operator set B24_READ_ONLY=1: every mode writes (get reserves rows, clear deletes
       them, error flags dead letters), so the worker refuses before it sends anything; through
       the broker (B24_BROKER): its operator did not name this user in B24_BROKER_DRAINERS, or
       its ceiling refuses the queue's calls
  4    auth or configuration: missing/invalid B24_* settings, webhook auth (event.* needs
       OAuth), rejected tokens, a corrupt checkpoint (moved aside) or DLQ line (left in place:
       repair it), an unwritable state folder
  5    another worker already runs for this portal and state folder
  6    the portal kept failing (5xx, limits, network) after retries: safe to run again
  130  interrupted before the worker started
On failure stderr carries one line: {"error": {"code", "message", "hint", "retryable"}}.

examples:
  %(prog)s --drain                                    # cron: empty the queue
  %(prog)s --sleep 30 --handler-cmd "python3 sync.py"  # service
  %(prog)s --once --handler myapp.events:handle --event ONCRMDEALUPDATE
  %(prog)s --replay-dlq --handler-cmd ./sync.sh
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _connector(text: str) -> str:
    """An ``auth_connector`` key; an empty one (an unset variable in a unit file) would read the
    queue without a source instead, so it is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the key is empty (the queue without a source needs no flag)"
        )
    return text


def _retries(text: str) -> int:
    return positive_int(text) if text != "0" else 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = JsonErrorParser(
        prog=prog or "b24-offline-worker",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bitrix24-agent {__version__}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="work one reservation, then exit")
    mode.add_argument(
        "--drain", action="store_true", help="work until the queue is empty, then exit (cron)"
    )
    mode.add_argument(
        "--replay-dlq",
        action="store_true",
        help="feed the DLQ (local file and the portal's error rows) back through the handler",
    )
    parser.add_argument(
        "--sleep",
        type=_seconds,
        default=10.0,
        help="continuous mode: pause when the queue is empty (default 10), e.g. --sleep 30",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        help=f"rows per reservation (default {DEFAULT_LIMIT}; the portal's default is 50), "
        "e.g. --limit 200",
    )
    parser.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="NAME",
        help="only reserve events named NAME (repeatable), e.g. --event ONCRMLEADADD",
    )
    parser.add_argument(
        "--auth-connector",
        type=_connector,
        metavar="KEY",
        help="read the queue of this event.bind auth_connector, e.g. --auth-connector sync1",
    )
    handler = parser.add_mutually_exclusive_group()
    handler.add_argument(
        "--handler-cmd", metavar="CMD", help='run CMD per event, e.g. --handler-cmd "./sync.sh"'
    )
    handler.add_argument(
        "--handler",
        metavar="MOD:FUNC",
        help="call a Python function per event, e.g. --handler myapp.events:handle",
    )
    handler.add_argument(
        "--sink",
        type=Path,
        metavar="FILE",
        help="append events to a JSONL file (default: the state folder's inbox.jsonl)",
    )
    parser.add_argument(
        "--handler-timeout",
        type=_seconds,
        default=60.0,
        help="seconds a --handler-cmd may run before it is killed and retried (default 60)",
    )
    parser.add_argument(
        "--max-retries",
        type=_retries,
        default=5,
        help="retries after the first failed attempt before the DLQ (default 5), e.g. 3",
    )
    parser.add_argument(
        "--retry-delay",
        type=_seconds,
        default=1.0,
        help="first back-off in seconds, doubling up to 60 (default 1), e.g. --retry-delay 0.2",
    )
    parser.add_argument("--state-file", type=Path, help="checkpoint file, e.g. ./worker.json")
    parser.add_argument("--dlq-file", type=Path, help="dead-letter JSONL file, e.g. ./dlq.jsonl")
    parser.add_argument(
        "--application-token",
        metavar="TOKEN",
        help="expected app token (prefer B24_APPLICATION_TOKEN: flags show in `ps`)",
    )
    parser.add_argument(
        "--no-adopt",
        action="store_true",
        help="do not take over reservations without a checkpoint (several hosts, one portal)",
    )
    parser.add_argument(
        "--listen",
        metavar="[HOST:]PORT",
        help="continuous mode: accept ONOFFLINEEVENT notices here and wake at once (needs the "
        "application token; bind the URL with event.bind; not through the broker: the notices "
        "carry the app's OAuth tokens), e.g. --listen 127.0.0.1:8470",
    )
    parser.add_argument("--env-file", help="read settings from this .env file, e.g. prod.env")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="stderr log detail (default info)",
    )
    return parser


@contextmanager
def _stop_on_signals(events: Sequence[threading.Event], log: logging.Logger) -> Iterator[None]:
    """SIGTERM/SIGINT set ``events`` (stop after the event in hand, end any sleep); a second
    signal kills at once."""

    def on_signal(signum: int, frame: Any) -> None:
        log.warning("%s: finishing the current event, then exiting", signal.Signals(signum).name)
        for event in events:
            event.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _stderr_logging(level: str, mask: Callable[[str], str], stream: TextIO) -> Iterator[None]:
    """Worker logs on stderr, every line masked; removed again so in-process runs stay clean."""

    class _Masked(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return mask(super().format(record))

    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Masked("offline-worker %(levelname)s %(message)s"))
    logger = logging.getLogger("b24agent.worker")
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _listen_address(spec: str, mode: str, token: str | None, broker: str | None) -> tuple[str, int]:
    """``[HOST:]PORT`` of --listen, refused where it cannot work or could be abused.

    Not through the broker: the portal's ONOFFLINEEVENT notice carries the app's access and
    refresh tokens besides the application_token (on-offline-event.md; events/index.md,
    "Parameter auth"), and a worker the broker serves is the one that holds no credential."""
    from ..errors import UsageError

    if broker:
        raise UsageError(
            "--listen does not work through the broker (B24_BROKER): the portal's queue "
            "notices carry the app's OAuth tokens, which this worker must not receive",
            code="LISTEN_NOT_BROKERED",
            hint="drop --listen: the worker polls the queue every --sleep seconds, e.g. --sleep 5",
        )
    if mode != "continuous":
        raise UsageError("--listen only works in continuous mode (without --once/--drain)")
    if not token:
        raise UsageError(
            "--listen needs the app's application_token to tell the portal's notices from "
            "forged ones",
            hint="set B24_APPLICATION_TOKEN (or --application-token)",
        )
    host, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen: {spec!r} is not [HOST:]PORT", hint="e.g. 127.0.0.1:8470")
    return host or "127.0.0.1", int(port)


def _listen(
    stack: ExitStack, address: tuple[str, int] | None, token: str | None, wake: threading.Event
) -> Callable[[], dict[str, int]]:
    """Start the notice endpoint when asked; returns a reader of its counters for the summary."""
    from ..worker.wakeup import WakeListener

    if address is None or token is None:
        return dict
    listener = WakeListener(*address, token, wake).start()
    stack.callback(listener.close)
    _log.info("listening for ONOFFLINEEVENT notices on %s", listener.url)
    return lambda: {"notices": listener.accepted, "rejected_notices": listener.rejected}


def _worker_error(exc: Exception) -> Exception:
    """Failures in the worker's own terms: corrupt or unwritable state is ConfigError (exit 4),
    and a lost answer is TransientError (exit 6, not 7): the checkpoint and adoption recover
    whatever it may have reserved, so running the worker again is always safe."""
    from ..errors import ConfigError, CorruptStateError, OutcomeUnknownError, TransientError

    if isinstance(exc, OutcomeUnknownError):
        return TransientError(
            exc.message,
            code=exc.code,
            hint="run the worker again: it adopts any rows the lost answer reserved",
            http_status=exc.http_status,
        )

    if isinstance(exc, CorruptStateError) and exc.moved_to is not None:  # checkpoint, journal
        return exc.with_hint(
            "start the worker again: it adopts the reservations it held back from the "
            "portal (events it had already handled may be delivered once more)"
        )
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return ConfigError(
            f"cannot use the state folder:{where}: {exc.strerror or exc}",
            code="STATE_UNWRITABLE",
            hint="check B24_STATE_DIR, --state-file, --dlq-file and --sink are writable",
        )
    return exc


def _refuse_read_only(settings: Settings) -> None:
    """Every mode of the worker writes: event.offline.get reserves rows, the clear deletes them,
    event.offline.error flags dead letters. Under the operator's B24_READ_ONLY=1 it refuses
    whole (exit 3) before it takes the lock, touches its state or sends a request: a mode that
    only peeks would hand the same events over again on every run, and nobody asked for that."""
    from ..errors import PolicyError

    if settings.read_only:
        raise PolicyError(
            "the offline worker reserves and clears events on the portal (writes) and the "
            "operator set B24_READ_ONLY=1: refused, nothing was sent",
            code="READ_ONLY",
            hint="the worker runs only where the operator allows writes; event.offline.list "
            "reads the queue without changing it",
        )


class _Run:
    """One invocation: builds the worker, runs it, prints the summary and the error line."""

    def __init__(self, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
        self.args = args
        self.stdout = stdout
        self.stderr = stderr
        self.mask: Callable[[str], str] = default_mask()
        self.summary: dict[str, Any] | None = None

    def settings(self, broker: str | None) -> Settings:
        """Settings with --application-token applied; OAuth is required (event.* needs it).
        Through the ``broker`` the credentials and their kind are the broker's: this side only
        needs B24_DOMAIN, which names the portal in delivery ids and the state folder."""
        from ..errors import ConfigError
        from ..redact import Redactor
        from ..settings import load_settings

        overrides = {}
        if self.args.application_token is not None:
            overrides["B24_APPLICATION_TOKEN"] = self.args.application_token
        settings = load_settings(
            env_file=self.args.env_file, overrides=overrides, require_credentials=not broker
        )
        self.mask = Redactor(settings.secrets()).mask
        _refuse_read_only(settings)
        if broker:
            from .warm.brokered import check_address

            check_address(broker)
        if broker and not settings.base_url:
            raise ConfigError(
                "B24_DOMAIN is not set: through the broker the worker still names its portal "
                "(delivery ids, state folder), though it holds no credential",
                code="CONFIG_MISSING",
                hint="set B24_DOMAIN to the portal's address, e.g. B24_DOMAIN=example.bitrix24.com",
            )
        if not broker and settings.auth_mode != "oauth":
            raise ConfigError(
                "the offline worker needs OAuth app auth: event.offline.* answers "
                "WRONG_AUTH_TYPE to webhooks",
                code="CONFIG_INVALID",
                hint="set B24_AUTH_MODE=oauth with B24_CLIENT_ID, B24_CLIENT_SECRET, "
                "B24_ACCESS_TOKEN and B24_REFRESH_TOKEN of an app installed by an admin",
            )
        return settings

    def execute(self) -> int:
        from ..backends import open_backend
        from ..rest.client import Bitrix24Client
        from ..worker.checkpoint import Checkpoint
        from ..worker.dlq import DeadLetterQueue
        from ..worker.handlers import SinkHandler, build_handler
        from ..worker.lock import worker_lock
        from ..worker.loop import Options, Worker
        from ..worker.queue import OfflineQueue

        args = self.args
        broker = os.environ.get("B24_BROKER") or None  # the transport, as b24 reads it
        settings = self.settings(broker)
        mode = "replay" if args.replay_dlq else _mode(args)
        listen = None
        if args.listen:
            listen = _listen_address(args.listen, mode, settings.application_token, broker)
        folder = settings.state_dir / "offline-worker"
        sink = args.sink or folder / "inbox.jsonl"
        stop, wake = threading.Event(), threading.Event()
        with ExitStack() as stack:
            stack.enter_context(_stderr_logging(args.log_level, self.mask, self.stderr))
            # Bad handler specs fail before the lock is taken or any state is touched.
            handler = build_handler(
                command=args.handler_cmd,
                function=args.handler,
                sink=sink,
                timeout=args.handler_timeout,
            )
            stack.callback(handler.close)
            stack.enter_context(worker_lock(folder))
            checkpoint = Checkpoint(args.state_file or folder / "checkpoint.json").open()
            stack.callback(checkpoint.close)
            dlq = DeadLetterQueue(args.dlq_file or folder / "dlq.jsonl")
            stack.callback(dlq.close)
            dlq.open_entries()  # a damaged DLQ stops every mode before anything is sent
            if broker:
                from .warm.portal import BrokeredPortal

                client: Any = BrokeredPortal(broker)
            else:
                client = stack.enter_context(Bitrix24Client(settings))
            leases = open_backend(settings).worker_leases(
                _queue_name(args.auth_connector),
                _worker_name(folder),
                lease_s=settings.worker_lease_s,
            )
            leases.start()
            stack.callback(leases.stop)
            worker = Worker(
                queue=OfflineQueue(
                    client,
                    limit=args.limit,
                    event_names=args.event,
                    auth_connector=args.auth_connector,
                    batches=not broker,
                ),
                checkpoint=checkpoint,
                handler=handler,
                dlq=dlq,
                options=Options(
                    mode=mode,
                    sleep_s=args.sleep,
                    max_retries=args.max_retries,
                    retry_delay_s=args.retry_delay,
                    application_token=settings.application_token,
                    adopt=not args.no_adopt,
                    portal_retry_s=settings.retry_base_s,
                    portal_retry_max_s=max(settings.retry_max_s, settings.retry_base_s),
                ),
                portal=settings.portal_key,
                stop=stop,
                wake=wake,
                mask=self.mask,
                leases=leases,
            )
            extra: dict[str, Any] = {"handler": handler.description, "dlq_file": str(dlq.path)}
            if isinstance(handler, SinkHandler):
                extra["sink"] = str(sink)
            counts = _listen(stack, listen, settings.application_token, wake)
            stack.enter_context(_stop_on_signals((stop, wake), _log))
            _log.info(
                "worker started: mode %s, %s, state %s", mode, handler.description, checkpoint.path
            )
            try:
                worker.replay() if args.replay_dlq else worker.run()
            finally:
                self.summary = worker.summary.to_json(
                    requests=client.requests_sent,
                    dlq_open=len(dlq.open_entries()),
                    **extra,
                    **counts(),
                )
        return 0

    def finish(self, code: int) -> int:
        if self.summary is not None:
            try:
                self.stdout.write(self.mask(dump_line(self.summary)) + "\n")
                self.stdout.flush()
            except BrokenPipeError as exc:  # its reader left (`| head`): the exit code still tells
                quiet_if_reader_left(exc, self.stdout)
        return code

    def fail(self, exc: BaseException) -> int:
        error = as_b24_error(_worker_error(exc) if isinstance(exc, Exception) else exc)
        self.stderr.write(self.mask(dump_line(error.to_json())) + "\n")
        self.stderr.flush()
        return error.exit_code


def _queue_name(auth_connector: str | None) -> str:
    """The portal queue workers share: each auth_connector has its own."""
    return f"offline:{auth_connector}" if auth_connector else "offline"


def _worker_name(folder: Path) -> str:
    """This worker's name in the fleet: host and state folder, stable across restarts, so a
    restarted worker still owns the reservations its checkpoint holds."""
    import socket

    from ..fingerprint import digest

    return f"{socket.gethostname()}:{digest(str(folder.resolve()))[:16]}"


def _mode(args: argparse.Namespace) -> str:
    if args.once:
        return "once"
    return "drain" if args.drain else "continuous"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker; returns the exit code (see --help) instead of raising."""
    try:
        args = build_parser(program("b24-offline-worker")).parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:
        return _Run(argparse.Namespace(), sys.stdout, sys.stderr).fail(exc)
    run = _Run(args, sys.stdout, sys.stderr)
    try:
        code = run.execute()
    except (Exception, KeyboardInterrupt) as exc:
        code = run.fail(exc)
    return run.finish(code)
