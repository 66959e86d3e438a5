"""``sandbox_portal.py``: run the local Bitrix24 sandbox portal until SIGTERM or Ctrl-C.

Once it accepts connections it prints exactly one JSON line on stdout with the addresses and the
credentials a client needs (webhook, OAuth app, admin token); tests and ``make demo`` read that
line instead of guessing ports. Those secrets are random per run and only valid for this process.

Exit codes: 0 stopped cleanly · 2 usage (bad flag, non-loopback host without --allow-remote)
· 4 could not start (port taken, bad --db path).
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..sandbox import methods  # noqa: F401  (importing registers every method handler)
from ..sandbox.config import PLAN_LIMITS, Credentials, SandboxConfig
from ..sandbox.portal import Portal
from ..sandbox.server import SandboxServer
from ..settings import is_loopback_host
from .common import program, quiet_if_reader_left

#: What ``--seed-demo`` puts in the store (Store.seed kinds).
DEMO_COUNTS = {"crm.lead": 12, "crm.deal": 6, "crm.contact": 8, "crm.company": 4, "tasks.task": 5}

EPILOG = """examples:
  %(prog)s                          # random free port, standard plan
  %(prog)s --port 8024 --seed-demo  # fixed port with demo CRM data and tasks
  %(prog)s --plan unlimited --latency-ms 20 --db /tmp/portal.sqlite

exit codes: 0 stopped cleanly, 2 usage error, 4 could not start"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program("b24-sandbox"),
        description="Local Bitrix24 portal for tests, demos and agent rehearsal.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bitrix24-agent {__version__}")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port, 0 = any free one (default)")
    parser.add_argument(
        "--plan",
        choices=sorted(PLAN_LIMITS),
        default="standard",
        help="rate-limit plan: standard 2/s+50, enterprise 5/s+250, unlimited (default standard)",
    )
    parser.add_argument(
        "--latency-ms", type=int, default=0, help="sleep this long before each answer (e.g. 20)"
    )
    parser.add_argument(
        "--db", default=None, help="SQLite file to keep data across runs (default: in memory)"
    )
    parser.add_argument("--seed-demo", action="store_true", help="add demo leads, deals, tasks")
    parser.add_argument(
        "--ignore-bearer",
        action="store_true",
        help="read OAuth tokens only from the auth/access_token params, never a Bearer header",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the sandbox has no TLS; use with care)",
    )
    return parser


def startup_line(portal: Portal) -> dict[str, Any]:
    """The one JSON line printed at start."""
    creds, url = portal.credentials, portal.base_url
    return {
        "url": url,
        "webhook": {"user_id": creds.webhook_user_id, "code": creds.webhook_code},
        "webhook_url": f"{url}/rest/{creds.webhook_user_id}/{creds.webhook_code}/",
        "oauth": {
            "server": url,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "access_token": portal.oauth.initial_access,
            "refresh_token": portal.oauth.initial_refresh,
            "application_token": creds.application_token,
            "member_id": creds.member_id,
        },
        "admin_token": creds.admin_token,
    }


def _fail(code: int, message: str) -> int:
    sys.stderr.write(json.dumps({"error": {"code": "SANDBOX_START", "message": message}}) + "\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not is_loopback_host(args.host) and not args.allow_remote:
        return _fail(2, f"refusing to listen on non-loopback host {args.host}; --allow-remote")
    if args.latency_ms < 0 or not 0 <= args.port <= 65535:
        return _fail(2, "--latency-ms must be >= 0 and --port in 0..65535")
    config = SandboxConfig(
        plan=args.plan, latency_ms=args.latency_ms, bearer_header=not args.ignore_bearer
    )
    try:
        portal = Portal(config, Credentials(), args.db)
        server = SandboxServer((args.host, args.port), portal)
    except (OSError, sqlite3.Error) as exc:
        return _fail(4, f"cannot start: {getattr(exc, 'strerror', None) or exc}")
    if args.seed_demo:
        portal.store.seed(DEMO_COUNTS)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        print(json.dumps(startup_line(portal)), flush=True)
    except BrokenPipeError as exc:  # nobody reads the start-up line; the portal still serves
        quiet_if_reader_left(exc, sys.stdout)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    thread.join()
    server.server_close()
    portal.store.close()
    return 0
