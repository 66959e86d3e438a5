"""``b24-mcp`` / ``scripts/mcp_server.py``: start the MCP server on stdio or loopback HTTP.

Settings come from the server's own environment (what the MCP client's config sets) and an
optional ``--env-file``. A problem found at start is one JSON line on stderr and an exit code
(the CLI's codes); after that, stdout belongs to the MCP protocol and nothing else writes to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..cli.common import JsonErrorParser, as_b24_error, default_mask

__all__ = ["build_parser", "main"]

EPILOG = """\
examples:
  b24-mcp                                   # stdio: the MCP client starts it (see README)
  B24_MCP_TOKEN=... b24-mcp --http 127.0.0.1:8765
  python3 scripts/mcp_server.py --env-file ~/.config/bitrix24-agent/portal.env
                                            # an env file never in the skill folder

once running, errors are MCP tool errors carrying a code, a message and a hint.

exit codes:
  0    stopped normally
  2    usage (bad flag, --http not HOST:PORT or not a loopback address)
  4    configuration (missing portal credentials, --http without B24_MCP_TOKEN)
  130  interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    parser = JsonErrorParser(
        prog="b24-mcp",
        description="Serve the guarded Bitrix24 tools over the Model Context Protocol: stdio by "
        "default, or streamable HTTP on loopback with a bearer token.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bitrix24-agent {__version__}")
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp (loopback only; needs "
        "B24_MCP_TOKEN), e.g. --http 127.0.0.1:8765",
    )
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help="read settings from PATH, e.g. ~/.config/bitrix24-agent/portal.env (never inside "
        "the skill folder: runtimes show it to the model)",
    )
    return parser


def serve(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)  # first: --help and --version need no mcp SDK

    from ..settings import load_settings
    from .server import build_server

    # Read here as b24's launcher reads it: in front of the broker this side holds no
    # credentials, so settings load without them (only this server's own variables count).
    broker = os.environ.get("B24_BROKER") or None
    settings = load_settings(env_file=args.env_file, require_credentials=broker is None)
    if args.http is None:
        build_server(settings, broker=broker).run("stdio")
        return
    from .http import BearerToken, auth_settings, loopback_address, token_of

    host, port = loopback_address(args.http)
    verifier = BearerToken(token_of(settings.mcp_token))
    app = build_server(
        settings,
        transport="http",
        broker=broker,
        token_verifier=verifier,
        auth=auth_settings(host, port),
    )
    import uvicorn

    config = uvicorn.Config(
        app.streamable_http_app(host=host),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        serve(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from ..cli.output import dump_line

        error = as_b24_error(exc)
        sys.stderr.write(default_mask()(dump_line(error.to_json())) + "\n")
        return error.exit_code
    return 0
