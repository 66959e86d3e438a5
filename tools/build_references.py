"""Write the skill's routing references from the method catalog, so they cannot drift from it.

    python -m tools.build_references [--check] [--out DIR] [--rows N]

Writes ``references/packs.md`` (the most used methods of each pack, then which pack a task
needs and when to load its file) and one ``references/catalog-<pack>.md`` per pack. An agent
reads SKILL.md, packs.md and ONE catalog file before acting, so each catalog file must be cheap
and lead with what is needed most: the ``MOST_USED`` most used methods first, then up to
``--rows`` in all (the rest of the ranked ones, then each entity's entry points: list, get,
add...) with risk, scope and docs, then the rest of the pack as a brace-compressed name index
(``crm.quote.{add,get}``), so every current method name is findable and ``--explain NAME`` tells
the rest.

``--check`` writes nothing and exits 1 when a committed file differs from what the catalog gives
(or a catalog file exists for a pack that no longer does); the test suite runs it.
The words that route a request to a pack are hand-written here (``GUIDES``, ``ROUTING``); a pack
the catalog gains without a guide stops the generator, so none ships unexplained.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from b24agent.catalog import methods_in_pack, packs, riskiest
from b24agent.catalog.loader import MethodInfo, load
from b24agent.sandbox import methods as _handlers  # noqa: F401  (registers every handler)
from b24agent.sandbox.registry import lookup as sandbox_lookup

from tools.build_catalog import write_text_atomic

__all__ = ["GUIDES", "ROUTING", "check", "main", "render_all", "write"]

OUT_DIR = Path(__file__).resolve().parents[1] / "skills" / "bitrix24-agent" / "references"
"""``skills/bitrix24-agent/references``: the package sits in the skill folder's ``scripts/``."""
ROWS = 60
#: The first rows of a catalog file, and the methods named per pack at the top of packs.md: the
#: few an agent needs most often, before anything else it might read.
MOST_USED = 8
PACKS_MOST_USED = 4
CLIENT = "python3 scripts/bitrix24_client.py"
DOCS_PREFIX = "https://apidocs.bitrix24.com/api-reference/"
GENERATED = (
    "<!-- Generated from the method catalog by "
    "`python -m tools.build_references`; do not edit by hand. -->"
)
#: The verbs that open an entity, in the order an agent usually needs them.
ENTRY_VERBS = ("list", "get", "add", "update", "delete", "fields")


@dataclass(frozen=True)
class Guide:
    """Hand-written routing for one pack: the words that point to it, and when to load it."""

    words: str
    when: str


GUIDES: dict[str, Guide] = {
    "core": Guide(
        "lead, deal, contact, company, smart process (crm.item), stage, pipeline, activity, "
        "timeline comment, product rows, task, checklist, user, department, event handler, "
        "offline queue, batch",
        "enabled by default; load it for any CRM, task or user work",
    ),
    "comms": Guide(
        "chat, message, notification, bot, bot command, open lines, contact-center connector, "
        "line connector, SMS provider, mailbox, e-mail, telephony, call",
        "the task posts, notifies, runs a bot or touches lines and telephony",
    ),
    "automation": Guide(
        "business process, workflow, approval, robot, trigger, automation rule, universal "
        "list, RPA",
        "the task starts or changes business processes, robots, triggers or lists",
    ),
    "collab": Guide(
        "collab, workgroup, project, social network group, group members, feed, live feed, "
        "news feed, blog post, vote",
        "the task works with groups, projects or the feed (scrum boards: boards)",
    ),
    "content": Guide(
        "Drive, file, folder, upload, attachment, document generator, document template",
        "the task stores, uploads or generates files and documents",
    ),
    "boards": Guide(
        "scrum, backlog, sprint, epic, scrum kanban, task stages, My Plan",
        "the task moves work on scrum or kanban boards",
    ),
    "commerce": Guide(
        "order, payment, delivery, shipment, basket, cash register, product catalog, product, "
        "price, currency, VAT, warehouse, stock",
        "the task touches shop orders, payments or the product catalog",
    ),
    "services": Guide(
        "booking, resource booking, calendar, meeting, reminder, work time, time tracking, "
        "work day",
        "the task books resources, schedules meetings or reads work time",
    ),
    "platform": Guide(
        "Copilot, CoPilot, BitrixGPT, AI engine, AI prompt, entity storage, app options, "
        "widget, placement, custom field type, BI connector, push and pull",
        "the task registers AI engines, widgets or app storage, or feeds BI",
    ),
    "sites": Guide(
        "site, landing page, page block, site template, knowledge-base site",
        "the task builds or edits sites and landing pages",
    ),
    "compliance": Guide(
        "consent, agreement, e-signature, sign, signing document, security event log",
        "the task records consents, sends documents to sign or reads the security log",
    ),
    "diagnostics": Guide(
        "is this method available, scopes, features, which events exist, rights, server time",
        "before a rollout or when a call fails for reasons of access or availability",
    ),
    "hr": Guide(
        "org chart, company structure, team, employee (REST 3.0), HCM Link, payroll",
        "the task edits the company structure or payroll links (REST 3.0: --rest-v3)",
    ),
}

#: Words whose pack is easy to guess wrong (skill-brief.md "Routing an agent's request").
ROUTING: tuple[tuple[str, str], ...] = (
    ("collabs, workgroups, projects, social network groups", "collab (scrum: boards)"),
    ("Copilot, CoPilot, BitrixGPT, AI prompts", "platform (`ai.*`)"),
    (
        "open lines, contact-center connectors, line connectors",
        "comms (`imopenlines.*`, `imconnector.*`)",
    ),
    ("feed, live feed, news feed", "collab (`log.*`)"),
    ("sites, landing pages", "sites (`landing.*`)"),
    (
        "booking, calendar, work time, time tracking",
        "services (`booking.*`, `calendar.*`, `timeman.*`)",
    ),
    ("orders, payments, catalog, products", "commerce (`sale.*`, `catalog.*`)"),
    ("consents, e-signature, sign", "compliance (`userconsent.*`, `sign.*`)"),
)


class GuideError(Exception):
    """The catalog and the hand-written guides disagree; the message says what to add."""


@dataclass(frozen=True)
class Entry:
    """One method name of a pack, its versions folded together."""

    name: str
    risk: str
    scope: str
    docs: str
    apis: tuple[str, ...]
    app_only: bool
    deprecated: bool
    ranked: bool
    #: sandbox_portal.py serves it (under one of its API versions), so a chain can rehearse it.
    in_sandbox: bool

    @property
    def group(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def verb(self) -> str:
        return self.name.rpartition(".")[2]


def _entries(pack: str) -> list[Entry]:
    """The pack's methods in catalog order (most used first), one per name."""
    by_name: dict[str, list[MethodInfo]] = {}
    for info in methods_in_pack(pack):
        by_name.setdefault(info.name, []).append(info)
    catalog = load()
    return [
        Entry(
            name=name,
            risk=riskiest(v.risk for v in variants),
            scope=next((v.scope for v in variants if v.scope), ""),
            docs=variants[0].docs_url,
            apis=tuple(v.api for v in variants),
            app_only=any(v.app_only for v in variants),
            deprecated=all(v.deprecated for v in variants),
            ranked=catalog.rank(name) is not None,
            in_sandbox=any(sandbox_lookup(v.api, name) for v in variants),
        )
        for name, variants in by_name.items()
    ]


def _table_order(entries: Sequence[Entry]) -> list[Entry]:
    """Ranked methods as the catalog orders them, then entry verbs across all entities.

    Only a few methods carry a usage rank; for the rest, the list/get/add... of every entity
    shows more of the pack in a capped table than all verbs of the first few entities would,
    and top-level entities (``sale.order``) come before their parts (``sale.order.status``).
    """
    rest = [e for e in entries if not e.ranked and not e.deprecated]
    verb_rank = {verb: i for i, verb in enumerate(ENTRY_VERBS)}
    rest.sort(key=lambda e: (verb_rank.get(e.verb, len(ENTRY_VERBS)), e.name.count("."), e.name))
    return [e for e in entries if e.ranked] + rest


def _docs_cell(url: str) -> str:
    return url.removeprefix(DOCS_PREFIX)


#: The mark of a listed method the sandbox portal does not serve (rehearse it with --plan-only).
NOT_IN_SANDBOX = "not in the sandbox"


def _notes(entry: Entry) -> str:
    notes = []
    if entry.apis == ("v3",):
        notes.append("REST 3.0 only: --rest-v3")
    if entry.app_only:
        notes.append("OAuth app only")
    if entry.deprecated:
        notes.append("deprecated")
    if not entry.in_sandbox:
        notes.append(NOT_IN_SANDBOX)
    return "; ".join(notes)


def _index(entries: Iterable[Entry]) -> list[str]:
    """``group.{verb,verb}`` lines, one per entity, alphabetical."""
    groups: dict[str, list[str]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry.verb)
    lines = []
    for group in sorted(groups):
        verbs = sorted(groups[group])
        if not group or len(verbs) == 1:
            lines.extend(f"- `{f'{group}.' if group else ''}{verb}`" for verb in verbs)
        else:
            lines.append(f"- `{group}.{{{','.join(verbs)}}}`")
    return lines


def _counts(info: dict[str, object]) -> str:
    return (
        f"{info['methods']} methods ({info['read']} read, {info['write']} write, "
        f"{info['destructive']} destructive)"
    )


def _table_intro(ranked: int) -> str:
    then = "each entity's " + ", ".join(ENTRY_VERBS) + " (top-level entities first)."
    if not ranked:
        return "Then " + then
    return f"The next {ranked} most used methods; then " + then


def _rows(entries: Sequence[Entry]) -> list[str]:
    return [
        "| method | risk | scope | docs | notes |",
        "|---|---|---|---|---|",
        *(
            f"| `{e.name}` | {e.risk} | {e.scope or '-'} | {_docs_cell(e.docs)} | {_notes(e)} |"
            for e in entries
        ),
    ]


def _enable(pack: str) -> str:
    if pack == "core":
        return "on by default"
    return f"`--packs core,{pack}` (or add it to `B24_PACKS`)"


def render_catalog(pack: str, info: dict[str, object], rows: int = ROWS) -> str:
    """``catalog-<pack>.md``: the capped table, then the index of the remaining names."""
    entries = _entries(pack)
    shown = _table_order(entries)[:rows]
    shown_names = {e.name for e in shown}
    rest = [e for e in entries if e.name not in shown_names and not e.deprecated]
    hidden_deprecated = sum(1 for e in entries if e.name not in shown_names and e.deprecated)
    lead, more = shown[:MOST_USED], shown[MOST_USED:]
    lines = [
        f"# Pack `{pack}`: {info['description']}",
        "",
        GENERATED,
        "",
        f"## Most used ({len(lead)})",
        "",
        *_rows(lead),
        "",
        f"Call one: `{CLIENT} METHOD --params JSON`. `read` runs as is; `write` needs "
        "`--confirm-write` or a plan; `destructive` needs `--confirm-destructive`. Anything "
        f"not listed here: `{CLIENT} --explain NAME` (risk, scope, docs, flags needed; unknown "
        f"names count as writes). Docs paths are relative to {DOCS_PREFIX}",
        "",
        f"{_counts(info)}. Enable: {_enable(pack)}.",
    ]
    if more:
        ranked = sum(1 for e in more if e.ranked)
        lines += [
            "",
            f"## More entry points ({len(more)})",
            "",
            _table_intro(ranked),
            "",
            *_rows(more),
        ]
    if rest:
        lines += ["", f"## The other {len(rest)}, by entity", "", *_index(rest)]
    if hidden_deprecated:
        lines += [
            "",
            f"{hidden_deprecated} deprecated methods are left out; prefer their replacements "
            "(`--explain` still describes them).",
        ]
    return "\n".join(lines) + "\n"


def render_packs(infos: Sequence[dict[str, object]]) -> str:
    """``packs.md``: the tricky words first, then one block per pack."""
    lines = [
        "# Packs: pick one, then read only its catalog file",
        "",
        GENERATED,
        "",
        "`core` is the default pack. Add others only when the task needs them: "
        "`--packs core,comms` or `B24_PACKS=core,comms`. A method outside the enabled packs "
        "stops with exit 3 and names the pack to add. The most specific prefix wins: "
        "`crm.product.*` is commerce although `crm.*` is core.",
        "",
        "## Most used, by pack",
        "",
        *(
            f"- {info['pack']}: "
            + ", ".join(
                f"`{e.name}`" for e in _table_order(_entries(str(info["pack"])))[:PACKS_MOST_USED]
            )
            for info in infos
        ),
        "",
        "## Words that are easy to route wrong",
        "",
        "| the user says | pack |",
        "|---|---|",
        *(f"| {words} | {pack} |" for words, pack in ROUTING),
        "",
        "## Packs",
    ]
    for info in infos:
        pack = str(info["pack"])
        guide = GUIDES[pack]
        patterns = " ".join(f"`{p}`" for p in info["patterns"])  # type: ignore[attr-defined]
        lines += [
            "",
            f"### {pack}: [catalog-{pack}.md](catalog-{pack}.md)",
            f"- Focus: {info['description']}",
            f"- Load when: {guide.when}",
            f"- Words: {guide.words}",
            f"- Prefixes: {patterns}",
            f"- Size: {_counts(info)}",
        ]
    return "\n".join(lines) + "\n"


def render_all(rows: int = ROWS) -> dict[str, str]:
    """File name -> text for every reference file the catalog defines."""
    infos = packs()
    names = [str(info["pack"]) for info in infos]
    missing = [p for p in names if p not in GUIDES]
    stale = [p for p in GUIDES if p not in names]
    if missing or stale:
        raise GuideError(
            f"routing guides out of step with the catalog: missing {missing}, unknown {stale}; "
            "edit GUIDES in tools/build_references.py"
        )
    files = {"packs.md": render_packs(infos)}
    for info in infos:
        files[f"catalog-{info['pack']}.md"] = render_catalog(str(info["pack"]), info, rows)
    return files


def check(out_dir: Path, rows: int = ROWS) -> list[str]:
    """Why the files in ``out_dir`` differ from the catalog (empty when they match)."""
    files = render_all(rows)
    problems = []
    for name, text in files.items():
        path = out_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from the catalog")
    problems += [
        f"{path.name}: no such pack any more"
        for path in sorted(out_dir.glob("catalog-*.md"))
        if path.name not in files
    ]
    return problems


def write(out_dir: Path, rows: int = ROWS) -> list[str]:
    """Write every reference file (and remove catalog files of vanished packs); returns names."""
    files = render_all(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in out_dir.glob("catalog-*.md"):
        if path.name not in files:
            path.unlink()
    for name, text in files.items():
        write_text_atomic(out_dir / name, text)
    return sorted(files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.build_references",
        description="Write references/packs.md and references/catalog-<pack>.md from the catalog.",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"default: {OUT_DIR}")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"table rows per pack ({ROWS})")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files drifted"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.out, args.rows)
            for problem in problems:
                print(f"{args.out}/{problem}", file=sys.stderr)
            if problems:
                print("run: python -m tools.build_references", file=sys.stderr)
            return 1 if problems else 0
        written = write(args.out, args.rows)
    except (GuideError, OSError) as exc:
        print(f"references: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
