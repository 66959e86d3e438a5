"""Read the generated ``methods.json`` once per process and index it.

Loading is deferred to the first lookup and cached, so importing the catalog costs nothing (the
CLI's ``--help`` must stay fast). The file is package data built by ``build.py``; if it is missing
or damaged the install is broken, which is reported as a configuration error (exit 4) rather
than silently treating every method as unknown.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Risk = Literal["read", "write", "destructive"]

DATA_FILE = Path(__file__).with_name("methods.json")
FORMAT = 1


@dataclass(frozen=True)
class MethodInfo:
    """One documented method in one API version (a name may exist in both v2 and v3)."""

    name: str
    risk: Risk
    pack: str
    scope: str
    docs_url: str
    api: str
    deprecated: bool
    title: str
    app_only: bool = False
    composite: bool = False
    why: str | None = None
    """The reason for a per-method verdict, when the verb alone would mislead."""


@dataclass(frozen=True)
class PackInfo:
    name: str
    description: str
    patterns: tuple[str, ...]
    extra: bool


@dataclass(frozen=True)
class EventInfo:
    name: str
    scope: str
    docs_url: str
    title: str


_REQUIRED = frozenset({"name", "api", "risk", "pack", "scope", "doc", "deprecated", "title"})


def _method(record: Mapping[str, Any], base: str) -> MethodInfo:
    return MethodInfo(
        name=record["name"],
        risk=record["risk"],
        pack=record["pack"],
        scope=record["scope"],
        docs_url=base + record["doc"],
        api=record["api"],
        deprecated=bool(record["deprecated"]),
        title=record["title"],
        app_only=bool(record.get("app_only", False)),
        composite=bool(record.get("composite", False)),
        why=record.get("why"),
    )


class Catalog:
    """The indexed document. Records stay plain dicts until asked for: ``risk_of`` on the hot
    path of every CLI call needs one field, not 1,700 objects built up front."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
        self.docs_base: str = document["docs_base"]
        self.records: dict[str, list[Mapping[str, Any]]] = {}
        """Lower-case name -> its records, v2 before v3 (the builder sorts them)."""
        for record in document["methods"]:
            if not record.keys() >= _REQUIRED:
                raise KeyError(f"{record.get('name')!r} lacks {sorted(_REQUIRED - record.keys())}")
            self.records.setdefault(record["name"], []).append(record)
        self.packs = tuple(
            PackInfo(p["pack"], p["description"], tuple(p["patterns"]), bool(p["extra"]))
            for p in document["packs"]
        )
        self.events = {
            e["name"]: EventInfo(e["name"], e["scope"], self.docs_base + e["doc"], e["title"])
            for e in document["events"]
        }
        """Upper-case event name -> info."""

    def risks(self, name: str) -> list[Risk]:
        """The class of each documented variant of ``name`` (empty when unknown)."""
        return [record["risk"] for record in self.records.get(name, ())]

    def pack(self, name: str) -> str | None:
        records = self.records.get(name)
        return records[0]["pack"] if records else None

    def rank(self, name: str) -> int | None:
        """Position in the curated most-used list, None for the rest."""
        return self.records[name][0].get("rank")

    def variants(self, name: str) -> tuple[MethodInfo, ...]:
        return tuple(_method(r, self.docs_base) for r in self.records.get(name, ()))


@functools.cache
def load(path: Path = DATA_FILE) -> Catalog:
    """The indexed catalog at ``path`` (cached per path)."""
    try:
        with path.open(encoding="utf-8") as handle:
            return Catalog(json.load(handle))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        from ..errors import ConfigError

        raise ConfigError(
            f"the method catalog {path} is missing or damaged ({type(exc).__name__}: {exc})",
            code="CATALOG_UNREADABLE",
            hint="reinstall the skill: its method catalog is missing or damaged",
        ) from exc
