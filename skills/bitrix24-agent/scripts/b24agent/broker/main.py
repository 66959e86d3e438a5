"""``b24-broker``: run the broker (``serve``), and let a person decide on plans (``approve``,
``deny``, ``list``, ``show``). Errors are one JSON line on stderr with ``b24``'s exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..cli.common import JsonErrorParser, as_b24_error
from ..cli.output import dump_line
from ..display import for_a_person
from ..errors import PolicyError, UsageError

__all__ = ["build_parser", "main"]

EXAMPLES = """\
examples:
  b24-broker serve --socket /run/b24-broker/b24.sock --group b24-agents --approvers b24-ops \\
      --env-file /etc/b24-broker/broker.env
  b24-broker list
  b24-broker approve p-3f9aQk...      # shows the plan and its preview, then asks
  b24-broker deny p-3f9aQk...
The admin commands find the socket from --admin-socket, or admin.sock next to the socket
B24_BROKER names, and use it only if it is served by B24_BROKER_USER (a name or uid), or by
you when that is unset (exit 4 otherwise). Exit codes as b24's (b24 --help).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = JsonErrorParser(
        prog="b24-broker",
        description="The bitrix24-agent broker: holds the portal's credentials, keys, audit log "
        "and policy under the operator's account; agents reach it with B24_BROKER=unix:PATH.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser("serve", help="run the broker, e.g. under systemd")
    serve.add_argument(
        "--socket", required=True, metavar="PATH", help="the agents' socket, e.g. /run/b24.sock"
    )
    serve.add_argument(
        "--admin-socket",
        metavar="PATH",
        help="the approvers' socket (default: admin.sock next to --socket)",
    )
    serve.add_argument("--group", metavar="GROUP", help="who may call, e.g. b24-agents")
    serve.add_argument("--approvers", metavar="GROUP", help="who may approve, e.g. b24-ops")
    serve.add_argument("--env-file", metavar="PATH", help="the broker's settings, e.g. b.env")
    for name, text in (
        ("approve", "show a plan and its preview, then approve it"),
        ("deny", "decline a plan: it will never run"),
        ("show", "show a plan, its preview and its digest"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("plan", metavar="PLAN_ID")
        _admin_socket(command)
        if name == "approve":
            command.add_argument(
                "--yes", action="store_true", help="approve without asking (the plan is shown)"
            )
    _admin_socket(commands.add_parser("list", help="plans that may still run, and decisions"))
    return parser


def _admin_socket(command: argparse.ArgumentParser) -> None:
    command.add_argument("--admin-socket", metavar="PATH", help="the broker's admin socket")


def _admin_path(given: str | None) -> str:
    if given:
        return given
    calls = os.environ.get("B24_BROKER") or ""
    if calls.startswith("unix:"):
        return os.path.join(os.path.dirname(calls[len("unix:") :]), "admin.sock")
    raise UsageError(
        "where is the broker? give --admin-socket PATH (or set B24_BROKER=unix:PATH)",
        code="USAGE",
    )


def _print(document: Any) -> None:
    sys.stdout.write(for_a_person(json.dumps(document, indent=2, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


def _confirm(plan_id: str) -> bool:
    """Ask the person at the terminal; without one, only --yes approves."""
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write(f"approve plan {plan_id} as shown above? [y/N] ")
            tty.flush()
            return tty.readline().strip().lower() in ("y", "yes")
    except OSError:
        raise PolicyError(
            "no terminal to ask on; nothing was approved",
            code="APPROVAL_NOT_CONFIRMED",
            hint="read the plan (b24-broker show ID), then run approve with --yes",
        ) from None


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from .service import Sockets, serve

        sockets = Sockets(args.socket, args.admin_socket, args.group, args.approvers)
        return serve(sockets, args.env_file)
    from .admin import ask

    where = _admin_path(args.admin_socket)
    if args.command == "list":
        _print(ask(where, {"op": "list"}))
        return 0
    shown = ask(where, {"op": "show", "plan": args.plan})
    _print(shown)
    if args.command == "show":
        return 0
    if args.command == "approve" and not args.yes and not _confirm(args.plan):
        sys.stderr.write(dump_line({"note": f"plan {args.plan} left undecided"}) + "\n")
        return 0
    request = {"op": args.command, "plan": args.plan, "digest": shown["digest"]}
    _print(ask(where, request))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(build_parser().parse_args(argv))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (Exception, KeyboardInterrupt) as exc:
        error = as_b24_error(exc)
        sys.stderr.write(dump_line(error.to_json()) + "\n")
        return error.exit_code
