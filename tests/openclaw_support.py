"""OpenClaw's skill loading rules, re-implemented here (not copied) to check our SKILL.md.

Read from the source of openclaw 2026.9.6 (the npm package ``openclaw``: its dist files built
from packages/markdown-core/src/frontmatter.ts, src/shared/frontmatter.ts,
src/skills/loading/frontmatter.ts, src/skills/loading/config.ts and src/shared/config-eval.ts):

1. Frontmatter: the block between the opening ``---`` and the next ``---`` line is parsed as
   YAML; a YAML error means the skill does not load. Every top-level value becomes a string:
   scalars as they are, maps and lists as JSON, except that a key whose own line carries an
   inline value with a ``:`` keeps the raw text of that line (a line parser's fallback).
2. Manifest: ``metadata`` (now a string) is parsed as JSON (JSON5 as a fallback); the block is
   the first object found under ``openclaw``, then under the legacy key ``clawdbot``.
3. ``requires``: ``bins``, ``anyBins``, ``env`` and ``config``, each a list or a comma list.
4. ``install``: entries whose ``kind`` (or ``type``) is brew, node, go, uv or download and that
   carry what their kind needs (uv: a ``package`` that matches UV_PACKAGE, does not start with
   ``-`` and holds no ``\\`` or ``://``); other entries are dropped silently.
5. Eligibility: a listed ``os`` must include the platform; ``always: true`` skips the rest;
   every ``env`` name must be non-empty in the process environment, or set in the skill's
   config entry, or be ``primaryEnv`` while the entry has an ``apiKey``; every ``config`` path
   is truthy; every ``bins`` entry is on PATH; at least one ``anyBins`` entry is on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

MANIFEST_KEYS = ("openclaw", "clawdbot")
INSTALL_KINDS = ("brew", "node", "go", "uv", "download")
UV_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\]=<>!~+,]*$")
KEY_LINE = re.compile(r"^([\w-]+):\s*(.*)$")


def frontmatter(text: str) -> dict[str, str]:
    """Rule 1: the top-level fields as OpenClaw's loader hands them on (all strings)."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[0].rstrip() != "---":
        return {}
    end = next(i for i, line in enumerate(lines[1:], 1) if line.rstrip() == "---")
    block = "\n".join(lines[1:end])
    parsed = yaml.safe_load(block)  # raises on a YAML error: the skill would not load
    assert isinstance(parsed, dict), "frontmatter must be a YAML mapping"
    inline_colon = {
        m.group(1) for line in block.split("\n") if (m := KEY_LINE.match(line)) and ":" in m[2]
    }
    result: dict[str, str] = {}
    for key, value in parsed.items():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            if key in inline_colon:
                line = next(x for x in block.split("\n") if x.startswith(f"{key}:"))
                result[key] = KEY_LINE.match(line)[2].strip()  # type: ignore[index]
            else:
                result[key] = json.dumps(value)
        elif isinstance(value, bool):
            result[key] = "true" if value else "false"
        else:
            result[key] = str(value).strip()
    return result


def manifest(fields: Mapping[str, str]) -> dict[str, Any] | None:
    """Rule 2: the OpenClaw block of ``metadata``, or None (then the skill is not gated)."""
    raw = fields.get("metadata")
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    for key in MANIFEST_KEYS:
        if isinstance(parsed.get(key), dict) and parsed[key]:
            return parsed[key]
    return None


def string_list(value: Any) -> list[str]:
    """Rule 3's list reading: a list of values, or one comma-separated string."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return []


def requires(block: Mapping[str, Any]) -> dict[str, list[str]]:
    raw = block.get("requires")
    raw = raw if isinstance(raw, dict) else {}
    return {key: string_list(raw.get(key)) for key in ("bins", "anyBins", "env", "config")}


def installs(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rule 4: the install entries OpenClaw would offer."""
    kept = []
    for entry in block.get("install") or []:
        if not isinstance(entry, dict):
            continue
        kind = str(entry.get("kind") or entry.get("type") or "").strip().lower()
        if kind not in INSTALL_KINDS:
            continue
        package = str(entry.get("package") or "").strip()
        safe = (
            bool(package)
            and not package.startswith("-")
            and "\\" not in package
            and "://" not in package
            and UV_PACKAGE.match(package) is not None
        )
        if kind == "uv" and not safe:
            continue
        kept.append({**entry, "kind": kind})
    return kept


@dataclass
class Host:
    """What rule 5 looks at: the environment, the binaries on PATH and the skill's config."""

    env: Mapping[str, str]
    path: str
    platform: str = "linux"
    entry: Mapping[str, Any] = field(default_factory=dict)
    config: Callable[[str], bool] = lambda _path: False

    def has_bin(self, name: str) -> bool:
        return shutil.which(name, path=self.path) is not None


def eligible(block: Mapping[str, Any] | None, host: Host) -> bool:
    """Rule 5: would OpenClaw show the skill to the model on this host?"""
    if block is None:
        return True
    platforms = string_list(block.get("os"))
    if platforms and host.platform not in platforms:
        return False
    if block.get("always") is True:
        return True
    need = requires(block)

    def has_env(name: str) -> bool:
        configured = (host.entry.get("env") or {}).get(name)
        return bool(
            str(host.env.get(name) or "").strip()
            or str(configured or "").strip()
            or (block.get("primaryEnv") == name and host.entry.get("apiKey"))
        )

    return (
        all(has_env(name) for name in need["env"])
        and all(host.config(path) for path in need["config"])
        and all(host.has_bin(b) for b in need["bins"])
        and (not need["anyBins"] or any(host.has_bin(b) for b in need["anyBins"]))
    )
