"""Exports under faults: failed page commands are sent again and the export resumes from the
last id; another order is fetched by id and ordered locally, so rows deleted meanwhile never
make a surviving row disappear. The CLI run over 20,000 leads takes about 3 s."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cli_support import Cli
from client_support import client_for
from conftest import Sandbox


def _ids(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row["ID"]) for row in rows]


def _page_faults(portal: Sandbox, rate: float, seed: int) -> None:
    """Each crm.lead.list command (a page inside a batch) fails with a 500 at ``rate``."""
    portal.admin("faults", {"rules": [{"method": "crm.lead.list", "rate": rate}], "seed": seed})


class _Deleter(threading.Thread):
    """Deletes random leads (through the portal's own API) until told to stop."""

    def __init__(self, portal: Sandbox, candidates: list[int], seed: int) -> None:
        super().__init__(daemon=True)
        self.portal = portal
        self.candidates = list(candidates)
        random.Random(seed).shuffle(self.candidates)
        self.stop = threading.Event()
        self.deleted: list[int] = []

    def run(self) -> None:
        while self.candidates and not self.stop.is_set():
            lead = self.candidates.pop()
            answer = self.portal.rest("crm.lead.delete", {"id": lead})
            if answer.status_code == 200:
                self.deleted.append(lead)


def test_failed_page_commands_are_sent_again_and_the_export_resumes(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 3000})
    _page_faults(portal, 0.05, seed=11)
    with client_for(portal, tmp_path, max_retries=6) as client:
        rows = list(client.iter_all("crm.lead.list", {"select": ["ID", "TITLE"]}))
        batches = client.requests_sent
    assert sorted(_ids(rows)) == list(range(1, 3001))
    assert len(set(_ids(rows))) == len(rows)
    assert batches > 2  # without faults 3,000 rows take two batches: pages were sent again


def test_a_page_that_keeps_failing_ends_the_export_with_its_error(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 120})
    _page_faults(portal, 1.0, seed=1)
    with client_for(portal, tmp_path, max_retries=2) as client:
        with pytest.raises(Exception) as info:
            list(client.iter_all("crm.lead.list"))
        assert getattr(info.value, "exit_code", None) == 6
        assert client.requests_sent == 3  # the first batch and two resends


def test_another_order_with_concurrent_deletes_keeps_every_survivor(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 2000})
    # Slow pages down so the deletes land while the export runs.
    portal.admin("faults", {"rules": [{"method": "crm.lead.list", "error": None, "delay_ms": 4}]})
    deleter = _Deleter(portal, list(range(1, 2001, 7)), seed=5)
    order = {"OPPORTUNITY": "DESC", "DATE_CREATE": "ASC"}
    with client_for(portal, tmp_path) as client:
        deleter.start()
        rows = list(client.iter_all("crm.lead.list", {"order": order, "select": ["ID"]}))
    deleter.stop.set()
    deleter.join()
    survivors = set(range(1, 2001)) - set(deleter.deleted)
    got = Counter(_ids(rows))
    assert deleter.deleted, "no delete landed during the export"
    assert not (survivors - set(got)), f"{len(survivors - set(got))} surviving rows missing"
    assert max(got.values()) == 1
    assert all(set(row) == {"ID"} for row in rows)  # the sort fields were fetched, then dropped
    portal.admin("faults", {"rules": []})
    first_page = portal.rest("crm.lead.list", {"order": order, "select": ["ID"]}).json()
    expected = _ids(first_page["result"])  # the portal's own order, over the survivors
    assert [i for i in _ids(rows) if i in survivors][: len(expected)] == expected


def test_cli_export_of_20000_leads_with_page_faults_and_concurrent_deletes(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 20_000})
    _page_faults(portal, 0.02, seed=2026)
    cli = Cli.on_webhook(portal, tmp_path)
    deleter = _Deleter(portal, list(range(1, 20_001, 5)), seed=9)
    deleter.start()
    run = cli(
        "crm.lead.list",
        "--all",
        "--params",
        json.dumps({"order": {"DATE_CREATE": "DESC"}, "select": ["ID", "TITLE"]}),
        "--output",
        "jsonl",
    )
    deleter.stop.set()
    deleter.join()
    got = Counter(int(json.loads(line)["ID"]) for line in run.out.splitlines())
    survivors = set(range(1, 20_001)) - set(deleter.deleted)
    missing = survivors - set(got)
    print(
        f"\n20,000-lead export, 2% page faults, {len(deleter.deleted)} concurrent deletes: "
        f"exit {run.code}, {len(got)} ids, {len(missing)} survivors missing, "
        f"{sum(c - 1 for c in got.values())} duplicates"
    )
    assert run.code == 0, run.err
    assert not missing and max(got.values()) == 1
