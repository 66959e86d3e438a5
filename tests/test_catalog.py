"""The method catalog: every documented method classified, the risky ones never reads, and the
generated methods.json exactly what the builder makes from the shared TSV extract."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from b24agent import catalog
from b24agent.catalog import loader
from b24agent.errors import ConfigError
from hypothesis import given, settings
from hypothesis import strategies as st

from tools import build_catalog as build
from tools import catalog_rules as rules

ROOT = Path(__file__).resolve().parents[1]
SHARED_CANDIDATES = (ROOT.parent / "shared", Path("/work/shared"))
SHARED = next((p for p in SHARED_CANDIDATES if (p / "bitrix24-methods.tsv").is_file()), None)
needs_shared = pytest.mark.skipif(
    SHARED is None,
    reason="the shared docs extract (../shared/bitrix24-methods.tsv beside the project root) "
    "is not on this machine",
)

RISKS = {"read", "write", "destructive"}
TWELVE = {
    "core",
    "comms",
    "automation",
    "collab",
    "content",
    "boards",
    "commerce",
    "services",
    "platform",
    "sites",
    "compliance",
    "diagnostics",
}


def _all_names() -> list[str]:
    return sorted(loader.load().records)


def _tsv_rows() -> list[dict[str, str]]:
    assert SHARED is not None
    with (SHARED / "bitrix24-methods.tsv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


@needs_shared
def test_every_documented_method_has_a_class_a_pack_and_a_docs_page() -> None:
    rows = _tsv_rows()
    assert len(rows) > 1500
    pack_names = {p["pack"] for p in catalog.packs()}
    for row in rows:
        info = catalog.lookup(row["method"], api=row["api"])
        assert info is not None, row["method"]
        assert info.risk in RISKS
        assert info.pack in pack_names
        assert info.scope == row["scope"]
        assert info.deprecated is (row["deprecated"] == "1")
        assert info.docs_url == "https://apidocs.bitrix24.com/" + row["doc_path"][:-3] + ".html"


@pytest.mark.parametrize(
    ("method", "risk"),
    [
        ("event.offline.get", "write"),
        ("im.message.add", "write"),
        ("im.message.send", "write"),  # not documented: unknown, so a write
        ("imbot.message.add", "write"),
        ("im.notify", "write"),
        ("im.notify.system.add", "write"),
        ("im.notify.personal.add", "write"),
        ("imbot.v2.chat.message.send", "write"),
        ("tasks.task.chat.message.send", "write"),
        ("mail.message.send", "write"),
        ("tasks.task.delegate", "write"),
        ("disk.folder.uploadfile", "write"),
        ("bizproc.workflow.start", "write"),
        ("im.v2.event.get", "write"),
        ("im.notify.read.list", "write"),
        ("disk.file.getexternallink", "write"),
        ("disk.storage.getforapp", "write"),
        ("bizproc.workflow.terminate", "destructive"),
        ("bizproc.workflow.kill", "destructive"),
        ("vote.attachedvote.stop", "destructive"),
        ("event.offline.clear", "destructive"),
        ("event.unbind", "destructive"),
        ("placement.unbind", "destructive"),
        ("imbot.unregister", "destructive"),
        ("disk.folder.deletetree", "destructive"),
        ("disk.file.markdeleted", "destructive"),
        ("crm.entity.mergebatch", "destructive"),
        ("crm.deal.productrows.set", "destructive"),
        ("crm.deal.contact.items.set", "destructive"),
        ("crm.deal.details.configuration.reset", "destructive"),
        ("batch", "write"),
        # Classed by their docs pages, not their verbs (issue 17): leaving and handing over
        # cannot be taken back by the caller; these "gets" create a link or a token URL.
        ("im.chat.leave", "destructive"),
        ("imbot.v2.chat.leave", "destructive"),
        ("im.chat.setowner", "destructive"),
        ("sonet_group.setowner", "destructive"),
        ("salescenter.payment.getpublicurl", "write"),
        ("im.v2.file.download", "write"),
        ("imbot.v2.file.download", "write"),
        # ... and re-read, staying where their verbs put them.
        ("catalog.document.cancel", "write"),
        ("catalog.document.unconfirm", "write"),
        ("imopenlines.operator.transfer", "write"),
        ("landing.site.getpublicurl", "read"),
        ("catalog.product.download", "read"),
    ],
)
def test_named_methods_have_their_class(method: str, risk: str) -> None:
    assert catalog.risk_of(method) == risk


@pytest.mark.parametrize(
    "method", ["crm.deal.list", "user.current", "event.offline.list", "server.time", "profile"]
)
def test_plain_lookups_are_reads(method: str) -> None:
    assert catalog.risk_of(method) == "read"


def test_stopping_or_terminating_anything_is_destructive() -> None:
    enders = [n for n in _all_names() if n.rsplit(".", 1)[-1] in {"terminate", "kill", "stop"}]
    assert len(enders) >= 3
    assert {n: catalog.risk_of(n) for n in enders} == dict.fromkeys(enders, "destructive")


def test_classes_per_verb_table() -> None:
    """Prints verb -> {read, write, destructive} (run with -s to read it) and pins key verbs."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    overridden: dict[str, set[str]] = defaultdict(set)
    for name in _all_names():
        verb = name.rsplit(".", 1)[-1]
        table[verb][catalog.risk_of(name)] += 1
        if name in rules.OVERRIDES:
            overridden[verb].add(name)
    print("\nverb                     read  write  destructive")
    for verb, counts in sorted(table.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        print(f"{verb:24} {counts['read']:5} {counts['write']:6} {counts['destructive']:12}")

    def assert_all(verb: str, risk: str) -> None:
        names = [n for n in _all_names() if n.rsplit(".", 1)[-1] == verb]
        odd = {n: catalog.risk_of(n) for n in names if catalog.risk_of(n) != risk}
        assert set(odd) <= overridden[verb], f"{verb}: {odd} differ without an override"

    for verb in ("delete", "unbind", "unregister", "unset", "clear", "terminate", "kill", "stop"):
        assert set(table[verb]) == {"destructive"}, verb  # no exceptions at all
    assert_all("remove", "destructive")  # but taking a task off favorites is a write
    for verb in ("get", "list", "fields", "getfields", "getlist", "search", "current"):
        assert_all(verb, "read")
    for verb in ("add", "update", "send", "start", "complete", "register", "notify"):
        assert table[verb]["read"] == 0, verb
        assert_all(verb, "write")
    assert table["delete"]["destructive"] > 150
    assert overridden["get"] >= {"event.offline.get", "im.v2.event.get", "imbot.v2.event.get"}
    assert overridden["list"] == {"im.notify.read.list"}


def test_every_override_has_a_reason_and_shows_it() -> None:
    for name, (risk, why) in rules.OVERRIDES.items():
        assert risk in RISKS and len(why) > 15, name
        info = catalog.lookup(name)
        assert info is not None and info.why == why and info.risk == risk


@pytest.mark.parametrize(
    ("spelling", "risk"),
    [
        ("CRM.DEAL.LIST", "read"),
        ("crm.deal.list.json", "read"),
        (" Crm.Deal.Delete.JSON ", "destructive"),
        ("crm.deal.list/", "read"),
        ("no.such.method", "write"),
        ("crm.deal.teleport", "write"),
        ("", "write"),
    ],
)
def test_names_are_normalized_and_unknown_methods_are_writes(spelling: str, risk: str) -> None:
    assert catalog.risk_of(spelling) == risk


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_spelling_never_changes_the_class_or_the_allowlist_match(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(_all_names()))
    upper = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    suffix = data.draw(st.sampled_from(["", ".json", ".JSON", "/", ".json/", "  "]))
    spelled = "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True)) + suffix
    assert catalog.risk_of(spelled) == catalog.risk_of(name)
    assert catalog.pack_of(spelled) == catalog.pack_of(name)
    # "<first segment>*", not ".*": one-word methods such as "events" or "batch" exist too.
    assert catalog.match_allowlist(spelled, [name.split(".")[0] + "*"])
    assert catalog.match_allowlist(name, [spelled])


def test_unknown_method_is_not_in_any_pack() -> None:
    assert catalog.lookup("no.such.method") is None
    assert catalog.pack_of("no.such.method") is None


def test_methods_the_sandbox_and_chains_rely_on_are_present() -> None:
    for name in (
        "batch",
        "methods",
        "scope",
        "method.get",
        "server.time",
        "profile",
        "app.info",
        "feature.get",
        "user.current",
        "user.get",
        "event.bind",
        "event.unbind",
        "event.get",
        "events",
        "event.offline.get",
        "event.offline.clear",
        "event.offline.error",
        "event.offline.list",
        "crm.item.list",
        "tasks.task.complete",
        "im.message.add",
    ):
        assert catalog.lookup(name) is not None, name


def test_batch_is_a_composite_write_in_both_api_versions() -> None:
    v2, v3 = catalog.lookup("batch", api="v2"), catalog.lookup("batch", api="v3")
    assert v2 is not None and v3 is not None
    assert v2.composite and v3.composite and v2.risk == v3.risk == "write"
    assert v2.docs_url.endswith("/settings/how-to-call-rest-api/batch.html")
    assert catalog.lookup("batch") == v2  # v2 first when no api is asked for


def test_supplement_entries_say_why_they_are_there() -> None:
    records = json.loads(loader.DATA_FILE.read_text(encoding="utf-8"))["methods"]
    added = {(m["name"], m["api"]): m["supplement"] for m in records if "supplement" in m}
    assert set(added) == {(s["method"], s["api"]) for s in rules.SUPPLEMENT}
    assert all(len(reason) > 20 for reason in added.values())


def test_a_name_in_both_api_versions_keeps_one_pack_and_class() -> None:
    both = {n: loader.load().variants(n) for n, r in loader.load().records.items() if len(r) > 1}
    assert "tasks.task.get" in both
    for name, variants in both.items():
        assert [v.api for v in variants] == ["v2", "v3"], name
        assert len({(v.pack, v.risk) for v in variants}) == 1, name


def test_method_info_is_frozen() -> None:
    info = catalog.lookup("crm.lead.get")
    assert info is not None and info.pack == "core" and info.api == "v2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.risk = "write"  # type: ignore[misc]


EXPLAIN_KEYS = {
    "method",
    "known",
    "risk",
    "pack",
    "scope",
    "api",
    "title",
    "deprecated",
    "app_only",
    "composite",
    "why",
    "docs",
    "needs",
}


@pytest.mark.parametrize(
    ("method", "needs"),
    [
        ("crm.deal.list", []),
        ("crm.deal.add", ["--confirm-write"]),
        ("CRM.DEAL.DELETE.json", ["--confirm-destructive"]),
        ("im.message.add", ["--packs comms", "--confirm-write"]),
        ("catalog.product.list", ["--packs commerce"]),
        ("event.offline.get", ["--confirm-write", "B24_AUTH_MODE=oauth"]),
        ("event.offline.list", ["B24_AUTH_MODE=oauth"]),
        ("placement.unbind", ["--packs platform", "--confirm-destructive", "B24_AUTH_MODE=oauth"]),
        ("batch", []),
        ("no.such.method", ["B24_METHOD_ALLOWLIST", "--confirm-write"]),
    ],
)
def test_explain_shape_and_needs(method: str, needs: list[str]) -> None:
    out = catalog.explain(method)
    assert set(out) == EXPLAIN_KEYS
    assert out["method"] == catalog.normalize(method)
    assert out["needs"] == needs
    assert out["risk"] == catalog.risk_of(method)
    assert json.loads(json.dumps(out)) == out
    if out["known"]:
        assert out["docs"].startswith("https://apidocs.bitrix24.com/")
        assert out["pack"] == catalog.pack_of(method)
    else:
        assert out["pack"] is None and out["docs"] is None


def test_explain_names_the_reason_of_an_override() -> None:
    out = catalog.explain("event.offline.get")
    assert out["known"] is True and out["app_only"] is True
    assert "clear=1" in out["why"]
    assert out["docs"] == "https://apidocs.bitrix24.com/api-reference/events/event-offline-get.html"


def test_packs_table_counts_every_method_once() -> None:
    table = catalog.packs()
    names = [p["pack"] for p in table]
    assert set(names) >= TWELVE and len(names) == len(set(names))
    extras = {p["pack"] for p in table if p["extra"]}
    assert extras == set(names) - TWELVE == {"hr"}
    for entry in table:
        assert entry["description"] and entry["patterns"]
        assert entry["methods"] > 0
        assert entry["read"] + entry["write"] + entry["destructive"] == entry["methods"]
    assert sum(p["methods"] for p in table) == len(_all_names())
    diagnostics = next(p for p in table if p["pack"] == "diagnostics")
    assert diagnostics["write"] == diagnostics["destructive"] == 0


@pytest.mark.parametrize(
    ("method", "pack"),
    [
        ("crm.automation.trigger.add", "automation"),
        ("crm.documentgenerator.document.add", "content"),
        ("crm.product.list", "commerce"),
        ("tasks.api.scrum.sprint.start", "boards"),
        ("tasks.flow.flow.create", "core"),
        ("calendar.event.add", "services"),
        ("user.option.set", "platform"),
        ("user.admin", "diagnostics"),
        ("user.get", "core"),
        ("events", "diagnostics"),
        ("event.bind", "core"),
        ("ai.engine.list", "platform"),
        ("landing.site.add", "sites"),
        ("sign.b2e.document.send", "compliance"),
        ("humanresources.node.add", "hr"),
    ],
)
def test_pack_routing(method: str, pack: str) -> None:
    assert catalog.pack_of(method) == pack


def test_methods_in_pack_lists_most_used_first_then_alphabetically() -> None:
    core = catalog.methods_in_pack("core")
    names = [m.name for m in core]
    assert names[:4] == ["crm.lead.list", "crm.lead.get", "crm.lead.add", "crm.lead.update"]
    assert names.index("crm.deal.list") < names.index("tasks.task.list") < names.index("batch")
    ranked = [n for n in dict.fromkeys(names) if n in rules.MOST_USED]
    rest = [n for n in dict.fromkeys(names) if n not in rules.MOST_USED]
    assert list(dict.fromkeys(names)) == ranked + rest and rest == sorted(rest)
    assert all(m.pack == "core" for m in core)
    assert [m.api for m in core if m.name == "tasks.task.list"] == ["v2", "v3"]
    assert {m.name for m in catalog.methods_in_pack("Comms ")} >= {"im.message.add"}


def test_methods_in_unknown_pack_is_an_error_naming_the_packs() -> None:
    with pytest.raises(ValueError, match="known packs: core"):
        catalog.methods_in_pack("crm")


@pytest.mark.parametrize(
    ("method", "patterns", "allowed"),
    [
        ("crm.lead.add", ["crm.*"], True),
        ("CRM.Lead.Add.json", ["crm.*"], True),
        ("crm.lead.add", ["CRM.LEAD.*"], True),
        ("crm", ["crm.*"], False),
        ("crmx.lead.add", ["crm.*"], False),
        ("tasks.task.get", ["tasks.task.get"], True),
        ("tasks.task.get2", ["tasks.task.get"], False),
        ("tasks.task.get", ["crm.*", " tasks.task.get "], True),
        ("user.get", [], False),
        ("user.get", ["", "  "], False),
        ("user.get", ["*"], True),
        ("im.message.add", ["im.message.?dd"], True),
    ],
)
def test_match_allowlist(method: str, patterns: list[str], allowed: bool) -> None:
    assert catalog.match_allowlist(method, patterns) is allowed


def test_documented_events_are_looked_up_by_name() -> None:
    event = catalog.lookup_event("onCrmLeadAdd")
    assert event is not None and event.name == "ONCRMLEADADD" and event.scope == "crm"
    assert event.docs_url.startswith("https://apidocs.bitrix24.com/") and event.docs_url.endswith(
        ".html"
    )
    assert catalog.lookup_event("ONNOTHINGHAPPENS") is None


def test_importing_the_catalog_does_not_read_the_data() -> None:
    code = (
        "import b24agent.catalog as c; from b24agent.catalog import loader; "
        "n = loader.load.cache_info().currsize; c.risk_of('crm.deal.list'); "
        "print(n, loader.load.cache_info().currsize)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1"]


def test_damaged_data_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "methods.json"
    bad.write_text('{"format": 1, "methods": [', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        loader.load(bad)
    assert caught.value.code == "CATALOG_UNREADABLE" and caught.value.exit_code == 4
    with pytest.raises(ConfigError, match="missing or damaged"):
        loader.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("name", "title", "expected"),
    [
        ("x.thing.delete", "Delete a thing", ("destructive", "verb")),
        ("x.thing.deletebyfilter", "Delete things", ("destructive", "verb")),
        ("x.thing.unbindingfrommenu", "Unbind it", ("destructive", "verb")),
        ("x.thing.getchildren", "Get children", ("read", "verb")),
        ("x.thing.isenabled", "Check it", ("read", "verb")),
        ("x.thing.thread", "Get the thread", ("read", "title")),
        ("x.thing.cancel", "Cancel the thing", ("write", "default")),
        ("x.thing.open", "Get chat by code", ("read", "title")),
        ("event.offline.get", "Get events", ("write", "override")),
    ],
)
def test_classify_rules(name: str, title: str, expected: tuple[str, str]) -> None:
    assert build.classify(name, title) == expected


def test_a_method_outside_every_pack_stops_the_build() -> None:
    with pytest.raises(build.BuildError, match="no pack pattern matches"):
        build.pack_for("zzz.unheard.of")


def _run_builder(methods: Path, events: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The builder as its docs say to run it: ``python -m tools.build_catalog``."""
    args = ["--methods", str(methods), "--events", str(events), "--out", str(out)]
    return subprocess.run(
        [sys.executable, "-m", "tools.build_catalog", *args], capture_output=True, text=True
    )


def test_builder_refuses_a_tsv_without_the_columns(tmp_path: Path) -> None:
    bad = tmp_path / "methods.tsv"
    bad.write_text("method\tapi\ncrm.lead.get\tv2\n", encoding="utf-8")
    out = tmp_path / "out.json"
    proc = _run_builder(bad, bad, out)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "missing column(s) scope" in proc.stderr
    assert not out.exists()


@needs_shared
def test_builder_reproduces_the_committed_catalog(tmp_path: Path) -> None:
    assert SHARED is not None
    out = tmp_path / "methods.json"
    proc = _run_builder(SHARED / "bitrix24-methods.tsv", SHARED / "bitrix24-events.tsv", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: ")
    assert out.read_bytes() == loader.DATA_FILE.read_bytes(), (
        "methods.json is stale: rerun python -m tools.build_catalog and commit it"
    )
