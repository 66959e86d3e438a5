"""The MCP server: seven tools and the skill's reference pages on the SDK's ``MCPServer``.

Each tool has a JSON schema (from the annotated parameters) and a one-line description an agent
can act on; the work is in ``tools.ToolBox``. ``b24_execute_plan`` takes two resolver-filled
parameters (the SDK's ``Resolve``): the checked plan, then the human's answer, so the question is
asked before the tool body runs, on either protocol era (a standalone ``elicitation/create`` up
to 2025-11-25, an ``InputRequiredResult`` round from 2026-07-28).

No ``from __future__ import annotations`` here: the SDK reads the ``Resolve`` markers from the
annotations at registration, and those name functions local to ``build_server``.
"""

from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.resources import FileResource
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from ..settings import Settings
from .approval import Approve, Seen
from .brokered import BrokeredToolBox
from .tools import ToolBox

__all__ = ["REFERENCES", "build_server"]

REFERENCES = Path(__file__).resolve().parents[3] / "references"

INSTRUCTIONS = """\
Bitrix24 portal tools with guard rails. Read with b24_call; for every change call b24_plan \
(it returns a plan id and a preview of the record), show the plan to the user, then run it with \
b24_execute_plan: the user may be asked to approve it. Use b24_export for whole lists (it writes \
a JSONL file and returns its path), b24_explain to see a method's risk and pack, b24_packs for \
what is enabled. Errors carry a code, a message and a hint; a hint never asks you to lift a guard.\
"""

Method = Annotated[
    str, Field(description="REST method, e.g. crm.lead.list", min_length=1, max_length=200)
]
Params = Annotated[
    dict[str, Any],
    Field(description='method parameters as JSON, e.g. {"filter": {">ID": 100}}'),
]
Api = Annotated[Literal["v2", "v3"], Field(description="REST version; v3 is /rest/api/")]
PlanId = Annotated[
    str, Field(description="the plan_id b24_plan returned", min_length=1, max_length=100)
]
_READ = ToolAnnotations(read_only_hint=True, open_world_hint=True)
#: Most methods one b24_explain takes: 100 explanations stay well under the result cap.
MAX_EXPLAIN = 100


def build_server(
    settings: Settings,
    *,
    transport: str = "stdio",
    broker: str | None = None,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
) -> MCPServer:
    """The server for ``settings``; ``token_verifier``/``auth`` guard the HTTP transport;
    ``broker`` (``B24_BROKER``) runs every tool in the broker instead of here."""
    box = (
        ToolBox(settings, transport)
        if broker is None
        else BrokeredToolBox(settings, transport, broker)
    )
    app: MCPServer = MCPServer(
        "bitrix24-agent",
        instructions=INSTRUCTIONS,
        token_verifier=token_verifier,
        auth=auth,
        log_level="WARNING",
    )

    @app.tool(
        description="Run one read-only Bitrix24 REST call (writes: use b24_plan).",
        annotations=_READ,
    )
    def b24_call(
        method: Method, ctx: Context, params: Params | None = None, api: Api = "v2"
    ) -> CallToolResult:
        return box.call(ctx, method, params or {}, api)

    @app.tool(
        description="Plan a write (nothing is sent): returns plan_id and a preview.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    def b24_plan(
        method: Method, ctx: Context, params: Params | None = None, api: Api = "v2"
    ) -> CallToolResult:
        return box.plan(ctx, method, params or {}, api)

    def plan_seen(plan_id: str) -> Seen:
        return box.seen(plan_id)

    def human(seen: Annotated[Seen, Resolve(plan_seen)], ctx: Context) -> Elicit[Approve] | str:
        return box.ask(seen, ctx)

    @app.tool(
        description="Run a plan once, after the user approves its preview when required.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
    )
    def b24_execute_plan(
        plan_id: PlanId,
        ctx: Context,
        seen: Annotated[Seen, Resolve(plan_seen)],
        answer: Annotated[ElicitationResult[Approve], Resolve(human)],
    ) -> CallToolResult:
        return box.execute(ctx, plan_id, seen, answer)

    @app.tool(
        description="Plan a list of calls as one bulk plan (previews per record): one plan_id.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    def b24_plan_batch(
        calls: Annotated[
            list[dict[str, Any]],
            Field(
                description='[{"method": "crm.lead.update", "params": {...}}, ...]',
                min_length=1,
                max_length=1000,
            ),
        ],
        ctx: Context,
    ) -> CallToolResult:
        return box.plan_batch(ctx, calls)

    @app.tool(
        description="Export every row of a list method to a JSONL file: path and counts.",
        annotations=_READ,
    )
    def b24_export(method: Method, ctx: Context, params: Params | None = None) -> CallToolResult:
        return box.export(ctx, method, params or {})

    @app.tool(
        description="Explain methods: risk, pack, scope, docs link.",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    def b24_explain(
        methods: Annotated[
            list[Method],
            Field(description='e.g. ["crm.lead.add"]', min_length=1, max_length=MAX_EXPLAIN),
        ],
    ) -> CallToolResult:
        return box.explain(methods)

    @app.tool(
        description="List method packs and which ones the operator enabled.",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    def b24_packs() -> CallToolResult:
        return box.packs()

    for path in sorted(REFERENCES.glob("*.md")):
        app.add_resource(
            FileResource(
                uri=f"b24://references/{path.name}",
                name=path.stem,
                description=f"bitrix24-agent reference: {path.name}",
                mime_type="text/markdown",
                path=path,
            )
        )
    return app
