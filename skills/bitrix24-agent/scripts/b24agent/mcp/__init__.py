"""``b24-mcp``: the guarded pipeline served over the Model Context Protocol.

Claude Desktop, Cursor, VS Code and Codex reach tools through MCP rather than a shell. Here the
portal's credentials live in the server's environment (set in the client's config) and never
reach the model; every tool runs through ``guard/pipeline.py``, so packs, the operator ceiling,
plans, idempotency, the limiter and the audit log hold exactly as for the CLI, and each audit
line names the MCP client and tool. Writes go plan -> human approval (MCP elicitation) -> run.

Modules: ``server`` (tools and resources on the SDK's MCPServer), ``tools`` (what each tool does),
``approval`` (who must approve a plan, and asking), ``shaping`` (results under the token cap,
errors as tool errors), ``exports`` (JSONL files in the operator's folder), ``http`` (streamable
HTTP on loopback behind a bearer token), ``brokered`` (the tools through ``b24-broker`` when
``B24_BROKER`` is set), ``main`` (the command line).
"""
