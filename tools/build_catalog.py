"""Rebuild ``methods.json`` from the documented-methods extract.

    python -m tools.build_catalog --methods ../shared/bitrix24-methods.tsv \\
        --events ../shared/bitrix24-events.tsv [--out PATH] [--report]

The output is a pure function of the two TSV files and ``rules.py`` (no clock, sorted keys and
rows, one record per line so a rule change shows up as a readable diff), so the committed file
can be checked by rebuilding it. The skill folder ships without the TSVs; only the generated file
travels with it. Each record keeps ``basis`` (override, verb, title or default: the rule that
decided its risk) for reviewers; ``--report`` summarises those on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from b24agent.catalog.loader import DATA_FILE, FORMAT, Risk

from tools.catalog_rules import (
    APP_ONLY,
    COMPOSITE,
    DESTRUCTIVE_PREFIXES,
    DESTRUCTIVE_VERBS,
    DOCS_BASE,
    MOST_USED,
    OVERRIDES,
    PACKS,
    READ_PREFIXES,
    READ_TITLE_STARTS,
    READ_VERBS,
    SUPPLEMENT,
)

METHOD_COLUMNS = ("method", "api", "scope", "doc_path", "deprecated", "title")
EVENT_COLUMNS = ("event", "scope", "doc_path", "title")


class BuildError(Exception):
    """The inputs or the rules are inconsistent; the message says what to fix."""


def read_tsv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header naming at least ``columns``."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise BuildError(f"{path}: missing column(s) {', '.join(missing)}")
            return [{c: (row[c] or "").strip() for c in columns} for row in reader]
    except OSError as exc:
        raise BuildError(f"{path}: cannot read ({exc.strerror})") from exc


def verb_of(name: str) -> str:
    """The last segment of a method name, which names the action in almost every method."""
    return name.rsplit(".", 1)[-1]


def classify(name: str, title: str) -> tuple[Risk, str]:
    """``(risk, basis)`` for a documented method; basis says which rule decided (module doc)."""
    if name in OVERRIDES:
        return OVERRIDES[name][0], "override"
    verb = verb_of(name)
    if verb in DESTRUCTIVE_VERBS or verb.startswith(DESTRUCTIVE_PREFIXES):
        return "destructive", "verb"
    if verb in READ_VERBS or verb.startswith(READ_PREFIXES):
        return "read", "verb"
    if title.lower().startswith(READ_TITLE_STARTS):
        return "read", "title"
    return "write", "default"


def _pattern_weight(pattern: str, name: str) -> int:
    """How specifically ``pattern`` matches ``name``: 0 none, else longer is more specific."""
    if pattern.endswith(".*"):
        return len(pattern) - 1 if name.startswith(pattern[:-1]) else 0
    return 10_000 if name == pattern else 0


def pack_for(name: str) -> str:
    """The pack whose pattern matches ``name`` most specifically (see rules.Pack)."""
    weights = sorted(
        ((max(_pattern_weight(p, name) for p in pack.patterns), pack.name) for pack in PACKS),
        reverse=True,
    )
    (best, pack), (runner_up, other) = weights[0], weights[1]
    if best == 0:
        raise BuildError(f"{name}: no pack pattern matches; add one in rules.PACKS")
    if best == runner_up:
        raise BuildError(f"{name}: packs {pack} and {other} match equally; make one more specific")
    return pack


def docs_page(doc_path: str) -> str:
    """The site path of a docs source file: ``x/y.md`` is published as ``x/y.html``."""
    return doc_path[:-3] + ".html" if doc_path.endswith(".md") else doc_path


def _method_record(row: Mapping[str, str], rank: Mapping[str, int]) -> dict[str, Any]:
    name = row["method"].lower()
    risk, basis = classify(name, row["title"])
    record: dict[str, Any] = {
        "name": name,
        "api": row["api"],
        "risk": risk,
        "basis": basis,
        "pack": pack_for(name),
        "scope": row["scope"],
        "doc": docs_page(row["doc_path"]),
        "deprecated": row["deprecated"] == "1",
        "title": row["title"],
    }
    if name in OVERRIDES:
        record["why"] = OVERRIDES[name][1]
    if name in APP_ONLY:
        record["app_only"] = True
    if name in COMPOSITE:
        record["composite"] = True
    if name in rank:
        record["rank"] = rank[name]
    if "reason" in row:
        record["supplement"] = row["reason"]
    return record


def _check_names(rows: Iterable[Mapping[str, str]], names: Iterable[str], what: str) -> None:
    unknown = sorted(set(names) - {r["method"].lower() for r in rows})
    if unknown:
        raise BuildError(f"rules.{what} names methods the catalog lacks: {', '.join(unknown)}")


def build(method_rows: Sequence[Mapping[str, str]], event_rows: Sequence[Mapping[str, str]]):
    """The catalog document for ``method_rows`` (TSV rows) plus ``rules.SUPPLEMENT``."""
    listed = {(r["method"].lower(), r["api"]) for r in method_rows}
    stale = [s["method"] for s in SUPPLEMENT if (s["method"], s["api"]) in listed]
    if stale:
        raise BuildError(f"now in the extract, drop from rules.SUPPLEMENT: {', '.join(stale)}")
    rows = [*method_rows, *SUPPLEMENT]
    for names, what in ((OVERRIDES, "OVERRIDES"), (APP_ONLY, "APP_ONLY"), (MOST_USED, "MOST_USED")):
        _check_names(rows, names, what)
    rank = {name: i for i, name in enumerate(MOST_USED)}
    methods = sorted((_method_record(r, rank) for r in rows), key=lambda m: (m["name"], m["api"]))
    seen = Counter((m["name"], m["api"]) for m in methods)
    twice = sorted(f"{n} ({a})" for (n, a), k in seen.items() if k > 1)
    if twice:
        raise BuildError(f"listed twice: {', '.join(twice)}")
    events = sorted(
        (
            {
                "name": r["event"].upper(),
                "scope": r["scope"],
                "doc": docs_page(r["doc_path"]),
                "title": r["title"],
            }
            for r in event_rows
        ),
        key=lambda e: e["name"],
    )
    packs = [
        {
            "pack": p.name,
            "description": p.description,
            "patterns": list(p.patterns),
            "extra": p.extra,
        }
        for p in PACKS
    ]
    return {
        "format": FORMAT,
        "docs_base": DOCS_BASE,
        "packs": packs,
        "methods": methods,
        "events": events,
    }


def render(document: Mapping[str, Any]) -> str:
    """Deterministic text: scalar keys first, then each list with one record per line."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)

    lines = ["{"]
    scalars = [k for k, v in document.items() if not isinstance(v, list)]
    lists = [k for k, v in document.items() if isinstance(v, list)]
    for key in scalars:
        lines.append(f"{one(key)}: {one(document[key])},")
    for i, key in enumerate(lists):
        lines.append(f"{one(key)}: [")
        items = [one(item) for item in document[key]]
        lines.append(",\n".join(items))
        lines.append("]" + ("," if i < len(lists) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so a reader never sees half a catalog."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def report(document: Mapping[str, Any]) -> str:
    """Counts per rule and risk, the title-decided reads, and the verbs left to the default."""
    methods = document["methods"]
    by_basis = Counter((m["basis"], m["risk"]) for m in methods)
    lines = [f"{basis:9} {risk:12} {n}" for (basis, risk), n in sorted(by_basis.items())]
    lines.append("-- reads decided by title:")
    lines.extend(f"  {m['name']}  | {m['title']}" for m in methods if m["basis"] == "title")
    verbs = Counter(verb_of(m["name"]) for m in methods if m["basis"] == "default")
    lines.append("-- writes by default, per verb:")
    lines.append("  " + " ".join(f"{v}:{n}" for v, n in sorted(verbs.items())))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.build_catalog",
        description="Rebuild the method catalog (methods.json) from the docs TSV extract.",
    )
    parser.add_argument("--methods", type=Path, required=True, help="bitrix24-methods.tsv")
    parser.add_argument("--events", type=Path, required=True, help="bitrix24-events.tsv")
    parser.add_argument("--out", type=Path, default=DATA_FILE, help="default: the package's file")
    parser.add_argument("--report", action="store_true", help="print the rule basis to stderr")
    args = parser.parse_args(argv)
    try:
        document = build(
            read_tsv(args.methods, METHOD_COLUMNS), read_tsv(args.events, EVENT_COLUMNS)
        )
        write_text_atomic(args.out, render(document))
    except (BuildError, OSError) as exc:
        print(f"catalog build failed: {exc}", file=sys.stderr)
        return 1
    if args.report:
        sys.stderr.write(report(document))
    print(f"wrote {args.out}: {len(document['methods'])} methods, {len(document['events'])} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
