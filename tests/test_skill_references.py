"""The generated references (packs.md, catalog-<pack>.md) match the catalog and stay affordable.

If a test here fails after a catalog change, regenerate with
``python -m tools.build_references`` and commit the result.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from b24agent import catalog

from tools import build_references as references

REFS = Path(__file__).resolve().parents[1] / "skills" / "bitrix24-agent" / "references"
ROW = re.compile(r"^\| `([a-z0-9_.]+)` \| (\w+) \| ([^|]*) \| ([^|]*) \| ([^|]*) \|$", re.M)
INDEX = re.compile(r"^- `([a-z0-9_.]+?)(?:\.\{([a-z0-9_,]+)\})?`$", re.M)


def _pack_names() -> list[str]:
    return [str(p["pack"]) for p in catalog.packs()]


def _table(text: str) -> list[tuple[str, ...]]:
    return ROW.findall(text)


def _indexed(text: str) -> set[str]:
    """Expand the index lines: ``a.b.{c,d}`` -> a.b.c, a.b.d; a bare ``a.b.c`` stays."""
    names: set[str] = set()
    for head, verbs in INDEX.findall(text):
        if verbs:
            names.update(f"{head}.{verb}" for verb in verbs.split(","))
        else:
            names.add(head)
    return names


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.build_references", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_committed_references_match_the_catalog() -> None:
    assert references.check(REFS) == [], "run: python -m tools.build_references"


def test_check_flags_edited_missing_and_stale_files_and_write_repairs_them(tmp_path: Path) -> None:
    out = tmp_path / "references"
    shutil.copytree(REFS, out)
    assert _run("--check", "--out", str(out)).returncode == 0

    core = out / "catalog-core.md"
    core.write_text(core.read_text(encoding="utf-8").replace("| read |", "| write |", 1))
    (out / "catalog-comms.md").unlink()
    (out / "catalog-gone.md").write_text("# a pack that no longer exists\n")
    checked = _run("--check", "--out", str(out))
    assert checked.returncode == 1
    assert "catalog-core.md: differs" in checked.stderr
    assert "catalog-comms.md: missing" in checked.stderr
    assert "catalog-gone.md: no such pack" in checked.stderr

    written = _run("--out", str(out))
    assert written.returncode == 0, written.stderr
    assert not (out / "catalog-gone.md").exists()
    assert references.check(out) == []
    assert core.read_text(encoding="utf-8") == (REFS / "catalog-core.md").read_text("utf-8")


def test_every_pack_has_a_catalog_file_linked_from_packs_md() -> None:
    packs_md = (REFS / "packs.md").read_text(encoding="utf-8")
    files = {p.name for p in REFS.glob("catalog-*.md")}
    assert files == {f"catalog-{pack}.md" for pack in _pack_names()}
    for pack in _pack_names():
        assert f"### {pack}: [catalog-{pack}.md](catalog-{pack}.md)" in packs_md


@pytest.mark.parametrize("pack", _pack_names())
def test_catalog_file_is_capped_and_its_rows_agree_with_the_catalog(pack: str) -> None:
    text = (REFS / f"catalog-{pack}.md").read_text(encoding="utf-8")
    rows = _table(text)
    assert 0 < len(rows) <= references.ROWS
    scopes: dict[str, str] = {}
    for method in catalog.methods_in_pack(pack):
        if method.scope:
            scopes.setdefault(method.name, method.scope)
    for name, risk, scope, docs, _notes in rows:
        info = catalog.explain(name)
        assert info["known"] and info["pack"] == pack, name
        assert risk == info["risk"], name
        docs = docs.strip()
        assert (docs if docs.startswith("https://") else references.DOCS_PREFIX + docs) == (
            info["docs"]
        ), name
        assert scope.strip() == scopes.get(name, "-"), name
    assert "--explain NAME" in text


@pytest.mark.parametrize("pack", _pack_names())
def test_every_current_method_of_the_pack_is_findable_in_its_file(pack: str) -> None:
    text = (REFS / f"catalog-{pack}.md").read_text(encoding="utf-8")
    listed = [row[0] for row in _table(text)]
    indexed = _indexed(text)
    assert not set(listed) & indexed, "a method is both in the table and in the index"
    methods = catalog.methods_in_pack(pack)
    current = {m.name for m in methods if not catalog.explain(m.name)["deprecated"]}
    assert current <= set(listed) | indexed
    assert (set(listed) | indexed) <= {m.name for m in methods}


def test_core_table_starts_with_the_most_used_methods_in_catalog_order() -> None:
    rows = [row[0] for row in _table((REFS / "catalog-core.md").read_text(encoding="utf-8"))]
    ranked = list(dict.fromkeys(m.name for m in catalog.methods_in_pack("core")))
    assert rows[:10] == ranked[:10]
    assert rows[0] == "crm.lead.list" and "batch" in rows and "event.offline.get" in rows


def test_small_pack_tables_put_ranked_methods_first() -> None:
    collab = [row[0] for row in _table((REFS / "catalog-collab.md").read_text("utf-8"))]
    assert collab[:3] == ["sonet_group.create", "sonet_group.user.add", "log.blogpost.add"]
    diagnostics = [row[0] for row in _table((REFS / "catalog-diagnostics.md").read_text("utf-8"))]
    assert diagnostics[0] == "method.get"


def test_app_only_and_v3_only_methods_are_marked() -> None:
    core = (REFS / "catalog-core.md").read_text(encoding="utf-8")
    assert re.search(r"^\| `event\.bind` .*OAuth app only \|$", core, re.M)
    hr_rows = _table((REFS / "catalog-hr.md").read_text(encoding="utf-8"))
    v3_only = [row for row in hr_rows if catalog.explain(row[0])["api"] == ["v3"]]
    assert v3_only and all("--rest-v3" in row[4] for row in v3_only)


def test_routing_words_point_at_packs_that_hold_those_prefixes() -> None:
    packs_md = (REFS / "packs.md").read_text(encoding="utf-8")
    for words, target in references.ROUTING:
        assert f"| {words} | {target} |" in packs_md
        pack = target.split()[0]
        for prefix in re.findall(r"`([a-z_]+)\.\*`", target):
            owners = {
                catalog.pack_of(m.name)
                for p in _pack_names()
                for m in catalog.methods_in_pack(p)
                if m.name.startswith(prefix + ".")
            }
            assert owners == {pack}, (prefix, owners)
    for word, pack in (("calendar", "services"), ("scrum", "boards"), ("BitrixGPT", "platform")):
        assert word in references.GUIDES[pack].words


def test_a_pack_without_a_routing_guide_stops_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guides = dict(references.GUIDES)
    del guides["sites"]
    monkeypatch.setattr(references, "GUIDES", guides)
    with pytest.raises(references.GuideError, match=r"missing \['sites'\]"):
        references.render_all()


def test_each_catalog_file_stays_cheap_to_read() -> None:
    # An agent reads SKILL.md, packs.md and one catalog file before acting.
    for path in REFS.glob("catalog-*.md"):
        assert len(path.read_text(encoding="utf-8")) < 16_000, path.name
    assert len((REFS / "packs.md").read_text(encoding="utf-8")) < 10_000
