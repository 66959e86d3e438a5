"""``b24`` / ``bitrix24_client.py``: one guarded Bitrix24 REST call, a batch file or an export.

This module parses flags and prints; every call goes through ``guard/pipeline.py`` so the guard
rails cannot be skipped. Agents drive it from a shell, so its contract is strict: stdout carries
only the result, a failure is one JSON line on stderr plus a documented exit code, it never
prompts and never shows a traceback. Heavy imports (requests, jsonschema, the catalog data) are
made inside functions so ``--help`` and the argument checks start in a few milliseconds.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..errors import B24Error
    from ..guard.approval import Approver
    from ..guard.pipeline import CallOutcome, CallRequest, Outcome, Pipeline
    from ..rest.client import CallResult
    from ..settings import Settings
    from .output import Printer

from .. import __version__
from .common import (
    JsonErrorParser,
    as_b24_error,
    default_mask,
    positive_int,
    program,
    quiet_if_reader_left,
)

__all__ = ["build_parser", "main"]

EXIT_CODES = """\
exit codes:
  0    ok
  1    the portal refused the call (API error: Not found, ACCESS_DENIED, ERROR_ARGUMENT...);
       for --verify-audit: the hash chain is broken (the message names the first bad line)
  2    usage or validation error (unknown flag, malformed JSON, bad batch-file line)
  3    blocked by policy (needs --confirm-write / --confirm-destructive, a plan, the allowlist;
       or outside what the operator allows: B24_PACKS, B24_READ_ONLY, B24_ALLOW_FLAGS)
  4    auth or configuration (a missing setting or Python package, rejected credentials,
       a corrupt state file, a local file that cannot be used, e.g. a folder where a state
       file should be)
  5    conflict (idempotency key in use or reused with other params; stale or spent plan)
  6    transient error, gave up after retries (QUERY_LIMIT_EXCEEDED, 5xx on a read): retry later
  7    outcome unknown: a write may or may not have happened; check before repeating it
  129  interrupted by SIGHUP (128 + the signal, as a shell reports it), handled as Ctrl-C
  130  interrupted (Ctrl-C)
  143  interrupted by SIGTERM (128 + the signal), handled as Ctrl-C: the audit line is written
stdout closed early (`| head`): the run stops quietly with exit 0; rows after the last one read
were not fetched, and --batch-file calls after it may not have been sent.
On failure stderr carries one line: {"error": {"code", "message", "hint", "retryable"}}.
"""

EXAMPLES = """\
examples:
  %(prog)s crm.lead.list --params '{"select": ["ID", "TITLE"], "filter": {">ID": 100}}'
  %(prog)s crm.lead.get --params @lead.json --output result
  echo '{"id": 5}' | %(prog)s crm.lead.get --params -
  %(prog)s crm.lead.list --all --output jsonl > leads.jsonl
  %(prog)s crm.lead.add --params '{"fields": {"TITLE": "Web form"}}' --confirm-write
  %(prog)s --batch-file calls.jsonl --confirm-write      # lines: {"method": ..., "params": {...}}
  %(prog)s batch --params '{"cmd": {"me": "user.current", "lead": "crm.lead.get?id=1"}}'
  %(prog)s --explain crm.lead.delete tasks.task.add
"""

OUTPUTS = ("json", "result", "jsonl")
#: Thread switch interval while an export streams (seconds; Python's default is 0.005).
EXPORT_SWITCH_INTERVAL_S = 0.0005


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The full flag set; every help line carries an example. Built once per process and only
    renamed here (``prog`` shapes nothing but help and usage text, formatted when printed;
    ``parse_args`` leaves a parser as it was), so the warm server's workers find it ready
    whatever the caller's name for it (``b24``, ``python3 .../bitrix24_client.py``): building
    it cost a worker 1 ms of each call."""
    parser = _parser()
    parser.prog = os.path.basename(sys.argv[0]) if prog is None else prog
    return parser


@functools.cache
def _parser() -> argparse.ArgumentParser:
    parser = JsonErrorParser(
        description="Call the Bitrix24 REST API with guard rails: one call, a batch file or an "
        "export. The portal comes from B24_WEBHOOK_URL or B24_DOMAIN + credentials (env or .env).",
        epilog=EXAMPLES + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("method", nargs="?", metavar="METHOD", help="REST method, e.g. crm.lead.list or batch")
    add(
        "--version",
        action="version",
        version=f"bitrix24-agent {__version__}",
        help="print the version, e.g. %(prog)s --version",
    )

    call = parser.add_argument_group("call")
    call.add_argument(
        "--params",
        metavar="JSON",
        help="""params as JSON, @file.json or - for stdin, e.g. --params '{"id": 7}'""",
    )
    call.add_argument(
        "--rest-v3", action="store_true", help="use REST 3.0 (/rest/api/), e.g. main.eventlog.list"
    )
    call.add_argument(
        "--auto-refresh",
        action="store_true",
        help="no-op kept for old scripts: OAuth tokens refresh whenever B24_CLIENT_ID/_SECRET "
        "are set, e.g. %(prog)s --auto-refresh user.current",
    )
    call.add_argument(
        "--all", action="store_true", help="export every row of a list method, e.g. crm.deal.list"
    )
    call.add_argument(
        "--limit", type=positive_int, metavar="N", help="export at most N rows, e.g. --limit 500"
    )
    call.add_argument(
        "--batch-file",
        metavar="FILE",
        help="JSONL file of calls (- for stdin), sent 50 per request; prints one JSON line per "
        "call, e.g. --batch-file calls.jsonl",
    )
    call.add_argument(
        "--parallel",
        type=positive_int,
        metavar="N",
        default=None,
        help="send N batches of a --batch-file at once, only for calls whose order does not "
        "matter (e.g. independent adds), e.g. --parallel 4",
    )
    call.add_argument("--env-file", metavar="PATH", help="read settings from PATH, e.g. prod.env")

    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        choices=OUTPUTS,
        default="json",
        help="json: whole response (default); result: only `result`; jsonl: one item per line, "
        "e.g. --all --output jsonl",
    )
    out.add_argument("--compact", action="store_true", help="no indentation, e.g. for logs")
    out.add_argument(
        "--mask-secrets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mask secrets in stdout (errors are always masked); turning it off works only "
        "where the operator allows it, e.g. B24_ALLOW_FLAGS=no-mask-secrets",
    )

    guard = parser.add_argument_group("guard rails")
    guard.add_argument(
        "--packs", metavar="LIST", help="allowed method packs, e.g. --packs core,comms (B24_PACKS)"
    )
    guard.add_argument(
        "--list-packs",
        action="store_true",
        help="print the packs, e.g. %(prog)s --list-packs --output jsonl",
    )
    guard.add_argument(
        "--method-allowlist",
        metavar="LIST",
        help="extra allowed patterns, e.g. --method-allowlist 'crm.lead.*,user.get'",
    )
    guard.add_argument(
        "--allow-unlisted",
        action="store_true",
        help="run a method outside the packs/allowlist once; works only where the operator "
        "allows it, e.g. B24_ALLOW_FLAGS=allow-unlisted",
    )
    guard.add_argument(
        "--read-only",
        action="store_true",
        help="refuse every write in this run (the operator's form: B24_READ_ONLY=1), e.g. "
        "b24 --read-only crm.lead.list",
    )
    guard.add_argument(
        "--confirm-write", action="store_true", help="allow writes, e.g. crm.lead.add"
    )
    guard.add_argument(
        "--confirm-destructive",
        action="store_true",
        help="allow destructive calls, e.g. crm.lead.delete",
    )
    guard.add_argument(
        "--plan-only",
        action="store_true",
        help="store the call (or every line of a --batch-file) as a plan, print it with its "
        "ID, e.g. crm.lead.delete ... --plan-only",
    )
    guard.add_argument(
        "--execute-plan",
        metavar="ID",
        help="run a stored plan once, as printed by --plan-only (a destructive plan also needs "
        "--confirm-destructive), e.g. --execute-plan p-3f9aQk...",
    )
    guard.add_argument(
        "--require-plan",
        action="store_true",
        default=None,
        help="writes must run from a plan, e.g. in cron (env: B24_REQUIRE_PLAN=1)",
    )
    guard.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="dedupe a write across retries, e.g. --idempotency-key form-123",
    )
    guard.add_argument(
        "--no-idempotency",
        action="store_true",
        help="do not dedupe this write (a new --idempotency-key does that without it); works "
        "only where the operator allows it, e.g. B24_ALLOW_FLAGS=no-idempotency",
    )
    guard.add_argument(
        "--idempotency-resolve",
        choices=("done", "failed"),
        help="after checking the portal, settle a write that ended in exit 7: done (it "
        "happened) or failed (send it again), e.g. --idempotency-key form-1 "
        "--idempotency-resolve done",
    )
    guard.add_argument(
        "--audit-file", metavar="PATH", help="audit log path, e.g. --audit-file audit.jsonl"
    )
    guard.add_argument(
        "--no-audit",
        action="store_true",
        help="skip the audit record; works only where the operator allows it, e.g. "
        "B24_ALLOW_FLAGS=no-audit",
    )
    guard.add_argument(
        "--verify-audit",
        nargs="?",
        const="",
        metavar="FILE",
        help="check the audit log's hash chain across rotated files (exit 1 names the first "
        "broken line), e.g. --verify-audit audit.jsonl",
    )
    guard.add_argument(
        "--explain",
        nargs="+",
        metavar="METHOD",
        help="risk, pack, scope, docs of methods, one JSON line each, e.g. --explain crm.lead.add",
    )
    setup = parser.add_argument_group("set-up")
    setup.add_argument(
        "--install-skill",
        metavar="DIR",
        help="copy this skill folder into an agent's skills folder as DIR/bitrix24-agent, "
        "e.g. --install-skill ~/.agents/skills",
    )
    return parser


class _Cli:
    """One invocation: the streams, the mask in force and the error reporting."""

    def __init__(
        self,
        stdin: TextIO,
        stdout: TextIO,
        stderr: TextIO,
        *,
        approver: Approver | None = None,
        origin: dict[str, Any] | None = None,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.mask: Callable[[str], str] | None = None
        #: The pipeline running the request: only once it sent a write may that write have run.
        self.pipeline: Pipeline | None = None
        self.approver = approver
        self.origin = origin

    # --- failure -------------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> int:
        """Print ``exc`` as the one error line (always masked) and return its exit code."""
        from .output import dump_line

        if quiet_if_reader_left(exc, self.stdout):
            return 0
        error = as_b24_error(exc, dispatched=self.pipeline is not None and self.pipeline.wrote)
        text = dump_line(error.to_json())
        mask = self.mask or default_mask()
        try:
            self.stderr.write(mask(text) + "\n")
            self.stderr.flush()
        except OSError:
            pass
        return error.exit_code

    # --- commands ------------------------------------------------------------------------------
    def run(self, args: argparse.Namespace) -> int:
        if args.install_skill:
            from .install import install_skill

            self._printer(args).document(install_skill(args.install_skill))
            return 0
        if not args.mask_secrets:
            from ..guard.policy import check_widening

            settings = _load_settings(args, require_credentials=False)
            check_widening(["no-mask-secrets"], settings.allowed_flags)
        if args.list_packs:
            from .. import catalog

            return self._print_list(catalog.packs(), args)
        if args.explain:
            from .. import catalog

            return self._print_list((catalog.explain(m) for m in args.explain), args, lines=True)
        if args.verify_audit is not None:
            from ..guard.pipeline import verify_audit

            settings = _load_settings(args, require_credentials=False)
            self.mask = default_mask(settings.secrets())
            report = verify_audit(settings, args.verify_audit or None)
            self._printer(args).document(report)
            return 0
        request = _build_request(args, self.stdin, self.origin)
        return self._call(request, _load_settings(args), args)

    def _printer(self, args: argparse.Namespace) -> Printer:
        from .output import Printer

        mask = self.mask if args.mask_secrets else None
        return Printer(self.stdout, mask=mask, compact=args.compact)

    def _print_list(self, items: Any, args: argparse.Namespace, *, lines: bool = False) -> int:
        printer = self._printer(args)
        if lines or args.output == "jsonl":
            printer.lines(items)
        else:
            printer.document(list(items))
        return 0

    def _call(self, request: CallRequest, settings: Settings, args: argparse.Namespace) -> int:
        from ..guard.pipeline import Pipeline
        from .output import Progress

        verb, noun = ("sent", "calls") if request.mode == "batch_file" else ("exported", "rows")
        progress = Progress(self.stderr, verb, noun)
        with Pipeline(
            settings,
            progress=progress if progress.enabled else None,
            approver=self.approver,
        ) as pipeline:
            self.mask = pipeline.mask
            self.pipeline = pipeline
            outcome = pipeline.run(request)
            try:
                return self._render(outcome, args)
            finally:
                progress.finish()

    def _render(self, outcome: Outcome, args: argparse.Namespace) -> int:
        """Print the outcome on stdout, then its notes on stderr; a batch failure comes last."""
        printer = self._printer(args)
        failure = None
        if outcome.kind == "document":
            printer.document(outcome.document)
        elif outcome.kind == "response":
            assert outcome.response is not None
            _print_response(printer, outcome.response, args.output)
        elif outcome.kind == "items":
            assert outcome.stream is not None
            # The export fetches the next batch on a thread while this one prints. With the
            # default 5 ms switch interval that thread waited up to 5 ms for the GIL after each
            # socket read of a 3 MB answer; 0.5 ms took 100,000 leads from 10.7 s to 8.8 s.
            sys.setswitchinterval(EXPORT_SWITCH_INTERVAL_S)
            if args.output == "jsonl":
                printer.lines(outcome.stream)
            else:
                printer.array(outcome.stream, key="result" if args.output == "json" else None)
        else:
            assert outcome.stream is not None
            failure = _print_calls(printer, outcome.stream, bare=args.output == "result")
        self.note(outcome.notes)
        return self.fail(failure) if failure else 0

    def note(self, notes: list[str]) -> None:
        """Human-readable remarks about a success (a replay, a reconciliation), on stderr."""
        from .output import dump_line

        mask = self.mask or default_mask()
        for text in notes:
            self.stderr.write(mask(dump_line({"note": text})) + "\n")
        self.stderr.flush()


def _print_response(printer: Printer, response: CallResult, output: str) -> None:
    if output == "json":
        printer.document(response.body)
    elif output == "result":
        printer.document(response.result)
    else:
        result = response.result
        printer.lines(result if isinstance(result, list) else [result])


def _print_calls(printer: Printer, stream: Iterable[CallOutcome], *, bare: bool) -> B24Error | None:
    """One line per batch-file call, in file order; returns the error that sums up failures."""
    failures: list[CallOutcome] = []
    total = 0
    for item in stream:
        total += 1
        where = {"line": item.call.line, "method": item.call.method}
        if item.error is not None:
            failures.append(item)
            printer.line({**where, **item.error.to_json()})
        else:
            printer.line(item.result if bare else {**where, "result": item.result})
    return _batch_failure(failures, total) if failures else None


def _batch_failure(failures: list[CallOutcome], total: int) -> B24Error:
    """The error that sums up a batch file: an unknown write outcome outranks everything."""
    unknown = [f for f in failures if f.error is not None and f.error.exit_code == 7]
    chosen = (unknown or failures)[0]
    error = chosen.error
    assert error is not None
    error.message = (
        f"{len(failures)} of {total} calls failed; first: {chosen.call.label}: {error.message}"
    )
    error.hint = "see the per-line results on stdout; " + error.hint
    return error


#: The flags that set the Guards field of their own name; the two the CLI spells as negations
#: (--no-idempotency, --no-audit) are mapped where Guards is built. Never approved_plan: only a
#: human's answer sets that (MCP elicitation, b24-broker approve).
_GUARD_FLAGS = (
    "confirm_write",
    "confirm_destructive",
    "allow_unlisted",
    "plan_only",
    "execute_plan",
    "idempotency_key",
    "idempotency_resolve",
)


def _build_request(
    args: argparse.Namespace, stdin: TextIO, origin: dict[str, Any] | None = None
) -> CallRequest:
    """Turn flags and inputs into a CallRequest; every usage mistake is caught here."""
    from ..errors import UsageError
    from ..guard.pipeline import Call, CallRequest, Guards
    from .inputs import read_batch_file, read_params

    guards = Guards(
        **{name: getattr(args, name) for name in _GUARD_FLAGS},
        idempotency=not args.no_idempotency,
        audit=not args.no_audit,
    )
    _check_guard_flags(args)
    api = "v3" if args.rest_v3 else "v2"
    exporting = args.all or args.limit is not None
    if args.batch_file is not None:
        clash = [flag for flag, on in _batch_clashes(args) if on]
        if clash:
            raise UsageError(
                f"--batch-file cannot be combined with {', '.join(clash)}", code="USAGE"
            )
        lines = read_batch_file(args.batch_file, stdin=stdin)
        calls = tuple(Call(line.method, line.params, line.line) for line in lines)
        return CallRequest(
            "batch_file",
            calls,
            guards=guards,
            parallel=args.parallel or 1,
            params_checked=True,
            origin=origin,
        )
    if args.parallel is not None:
        raise UsageError("--parallel applies only to --batch-file", code="USAGE")
    if args.execute_plan is not None:
        clash = [flag for flag, on in _execute_plan_clashes(args) if on]
        if clash:
            raise UsageError(
                f"--execute-plan runs exactly the stored call; drop {', '.join(clash)}",
                code="USAGE",
                hint="the plan holds the method and params; only --confirm-destructive, guard "
                "and output flags go with it",
            )
    if not args.method and not args.execute_plan:
        raise UsageError(
            f"a METHOD is required, e.g. {program('b24')} crm.lead.list",
            code="USAGE",
            hint="or use --batch-file, --explain, --list-packs or --execute-plan",
        )
    if exporting and args.rest_v3:
        raise UsageError(
            "--all/--limit work with REST v2 list methods only; drop --rest-v3", code="USAGE"
        )
    call = Call(args.method or "", read_params(args.params, stdin=stdin))
    mode = "export" if exporting else "call"
    return CallRequest(mode, (call,), api=api, limit=args.limit, guards=guards, origin=origin)


def _check_guard_flags(args: argparse.Namespace) -> None:
    """Guard flags that contradict each other are usage errors (exit 2), found before anything
    is read or sent. They live here, not in the guard: only the CLI speaks in flags."""
    from ..errors import UsageError

    if args.idempotency_key is not None and args.no_idempotency:
        raise UsageError(
            "--idempotency-key and --no-idempotency contradict each other", code="USAGE"
        )
    if args.idempotency_resolve and args.no_idempotency:
        raise UsageError("--idempotency-resolve needs idempotency on", code="USAGE")
    if args.plan_only and (args.all or args.limit is not None):
        raise UsageError(
            "--plan-only plans one call or a --batch-file; an export (--all) is a read",
            code="USAGE",
            hint="run the export without --plan-only",
        )
    if args.plan_only and (args.idempotency_key or args.idempotency_resolve):
        raise UsageError(
            "--plan-only takes no idempotency flags: a plan runs at most once by itself",
            code="USAGE",
        )


def _batch_clashes(args: argparse.Namespace) -> list[tuple[str, bool]]:
    return [
        ("METHOD", bool(args.method)),
        ("--params", args.params is not None),
        ("--all/--limit", args.all or args.limit is not None),
        ("--rest-v3", args.rest_v3),
        ("--execute-plan", args.execute_plan is not None),
    ]


def _execute_plan_clashes(args: argparse.Namespace) -> list[tuple[str, bool]]:
    return [
        ("METHOD", bool(args.method)),
        ("--params", args.params is not None),
        ("--all/--limit", args.all or args.limit is not None),
        ("--rest-v3", args.rest_v3),
        ("--plan-only", args.plan_only),
        ("--idempotency-key", args.idempotency_key is not None),
        ("--no-idempotency", args.no_idempotency),
        ("--idempotency-resolve", args.idempotency_resolve is not None),
    ]


def _split(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _load_settings(args: argparse.Namespace, *, require_credentials: bool = True) -> Settings:
    """Settings from env/.env with the flags that override them (flags win)."""
    from ..settings import load_settings

    overrides = {
        "packs": _split(args.packs),
        "method_allowlist": _split(args.method_allowlist),
        "require_plan": args.require_plan,
        "read_only": args.read_only or None,
        "audit_file": args.audit_file,
    }
    settings = load_settings(
        env_file=args.env_file,
        overrides={k: v for k, v in overrides.items() if v is not None},
        require_credentials=require_credentials,
    )
    _check_audit_file(args, settings)
    return settings


def _check_audit_file(args: argparse.Namespace, settings: Settings) -> None:
    """An audit log elsewhere than the operator's would hide the run from it, so it is a
    widening: ``--audit-file`` naming another log, or a ``--env-file`` whose B24_AUDIT_FILE or
    B24_STATE_DIR moves it, needs ``audit-file`` in B24_ALLOW_FLAGS."""
    import os

    from ..guard.policy import check_widening

    moved = settings.audit_file != settings.operator_audit_file  # the same path: no lookups
    if moved and os.path.realpath(settings.audit_file) != os.path.realpath(
        settings.operator_audit_file
    ):
        source = "" if args.audit_file else f" (as {args.env_file} sets it)"
        check_widening(["audit-file"], settings.allowed_flags, source=source)


def main(
    argv: Sequence[str] | None = None,
    *,
    approver: Approver | None = None,
    origin: dict[str, Any] | None = None,
) -> int:
    """Run the CLI; returns the exit code (see EXIT_CODES) instead of raising.

    The broker passes ``approver`` (its channel for a human's approval) and ``origin`` (who
    connected); plain CLI mode has neither.
    """
    from ..rest.interrupts import terminations_interrupt

    cli = _Cli(sys.stdin, sys.stdout, sys.stderr, approver=approver, origin=origin)
    with terminations_interrupt():  # SIGTERM/SIGHUP: as Ctrl-C, audited (exit 143/129)
        try:
            args = build_parser(program("b24")).parse_args(argv)
            return cli.run(args)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        except (Exception, KeyboardInterrupt) as exc:
            return cli.fail(exc)
