"""The method catalog: what each documented Bitrix24 method risks, where it lives, what it needs.

Every documented REST method (from the official docs' extract, see ``build.py``) has a risk class
(``read`` / ``write`` / ``destructive``), a pack, its scope and its docs page. The safety layer
asks ``risk_of`` before any call; anything the catalog does not know is a write (fail closed).

    risk_of("crm.deal.list")        -> "read"
    explain("crm.deal.delete")      -> {..., "needs": ["--confirm-destructive"]}
    match_allowlist("crm.lead.add", ["crm.*"]) -> True

The data is read on first use and cached, so importing this package costs next to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .loader import Catalog, EventInfo, MethodInfo, PackInfo, Risk, load

__all__ = [
    "EventInfo",
    "MethodInfo",
    "PackInfo",
    "Risk",
    "explain",
    "lookup",
    "lookup_event",
    "match_allowlist",
    "methods_in_pack",
    "normalize",
    "pack_names",
    "pack_of",
    "packs",
    "risk_of",
    "riskiest",
]

RISKS: tuple[Risk, ...] = ("read", "write", "destructive")
UNKNOWN_RISK: Risk = "write"


def normalize(method: str) -> str:
    """Method names are case-insensitive and may end in ``.json`` or ``/`` (protocol.md 1)."""
    return method.strip().rstrip("/").lower().removesuffix(".json")


def riskiest(risks: Iterable[str]) -> Risk:
    """The strongest class among ``risks`` (``read`` when there are none)."""
    return max(risks, key=RISKS.index, default="read")  # type: ignore[return-value]


def _variants(method: str) -> tuple[MethodInfo, ...]:
    return load().variants(normalize(method))


def risk_of(method: str) -> Risk:
    """``read``, ``write`` or ``destructive``; unknown methods are writes.

    A name documented in both REST versions takes the stronger class of the two.
    """
    risks = load().risks(normalize(method))
    return riskiest(risks) if risks else UNKNOWN_RISK


def lookup(method: str, api: str | None = None) -> MethodInfo | None:
    """The catalog entry for ``method`` (the v2 one when both exist, unless ``api`` says)."""
    variants = _variants(method)
    if api is not None:
        variants = tuple(v for v in variants if v.api == api)
    return variants[0] if variants else None


def pack_of(method: str) -> str | None:
    """The pack that must be enabled for ``method``, or None for an unknown method."""
    return load().pack(normalize(method))


def _needs(risk: Risk, pack: str | None, *, app_only: bool, composite: bool) -> list[str]:
    """The CLI flags and settings a call will need (policy.py enforces them)."""
    needs = ["B24_METHOD_ALLOWLIST"] if pack is None else []
    if pack not in (None, "core"):
        needs.append(f"--packs {pack}")
    if not composite and risk != "read":
        needs.append(f"--confirm-{risk}")
    if app_only:
        needs.append("B24_AUTH_MODE=oauth")
    return needs


def explain(method: str) -> dict[str, Any]:
    """What a call to ``method`` risks and needs, as one JSON-ready dict.

    Keys: method, known, risk, pack, scope, api (versions documented), title, deprecated,
    app_only, composite, why, docs, needs. For ``batch`` (composite) the risk gates come from
    its commands, so ``needs`` lists no confirmation flag.
    """
    name = normalize(method)
    variants = _variants(name)
    if not variants:
        return {
            "method": name,
            "known": False,
            "risk": UNKNOWN_RISK,
            "pack": None,
            "scope": None,
            "api": [],
            "title": None,
            "deprecated": False,
            "app_only": False,
            "composite": False,
            "why": "not in the catalog: check the official docs; unknown methods count as writes",
            "docs": None,
            "needs": _needs(UNKNOWN_RISK, None, app_only=False, composite=False),
        }
    first = variants[0]
    risk = riskiest(v.risk for v in variants)
    return {
        "method": name,
        "known": True,
        "risk": risk,
        "pack": first.pack,
        "scope": first.scope,
        "api": [v.api for v in variants],
        "title": first.title,
        "deprecated": all(v.deprecated for v in variants),
        "app_only": first.app_only,
        "composite": first.composite,
        "why": next((v.why for v in variants if v.why), None),
        "docs": first.docs_url,
        "needs": _needs(risk, first.pack, app_only=first.app_only, composite=first.composite),
    }


def packs() -> list[dict[str, Any]]:
    """Every pack: description, name patterns, method count (distinct names) per risk."""
    catalog = load()
    out = []
    for pack in catalog.packs:
        risks = [
            riskiest(catalog.risks(name))
            for name in catalog.records
            if catalog.pack(name) == pack.name
        ]
        out.append(
            {
                "pack": pack.name,
                "description": pack.description,
                "extra": pack.extra,
                "patterns": list(pack.patterns),
                "methods": len(risks),
                **{risk: risks.count(risk) for risk in RISKS},
            }
        )
    return out


def pack_names() -> frozenset[str]:
    """The pack names alone: checked on every call, so without counting each pack's methods."""
    return frozenset(p.name for p in load().packs)


def _known_pack(catalog: Catalog, pack: str) -> str:
    name = pack.strip().lower()
    if name not in pack_names():
        known = ", ".join(p.name for p in catalog.packs)
        raise ValueError(f"unknown pack {pack!r}; known packs: {known}")
    return name


def methods_in_pack(pack: str) -> list[MethodInfo]:
    """The pack's methods, most used first (a curated ranking), then alphabetically.

    Raises ValueError for a pack the catalog does not define.
    """
    catalog = load()
    wanted = _known_pack(catalog, pack)
    chosen = [n for n in catalog.records if catalog.pack(n) == wanted]
    chosen.sort(key=lambda n: ((r := catalog.rank(n)) is None, r or 0, n))
    return [info for n in chosen for info in catalog.variants(n)]


def match_allowlist(method: str, patterns: Iterable[str]) -> bool:
    """True when ``method`` matches one of the fnmatch ``patterns`` (``crm.*``, ``user.get``).

    Both sides are normalized, so case and a ``.json`` suffix do not matter; blank patterns
    match nothing.
    """
    from fnmatch import fnmatchcase  # here, not at import: it pulls in re, and --help is timed

    name = normalize(method)
    return any(fnmatchcase(name, normalize(p)) for p in patterns if p.strip())


def lookup_event(event: str) -> EventInfo | None:
    """A documented event (``ONCRMLEADADD``...), case-insensitive; None when unknown."""
    return load().events.get(event.strip().upper())
