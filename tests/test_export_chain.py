"""When the id-chained export sends its next batch (issue 19): as soon as the last one is
answered, not when the caller has finished with earlier rows, and never more than one answered
batch ahead of the caller."""

from __future__ import annotations

import time
from pathlib import Path

from client_support import client_for
from conftest import Sandbox


def _requests(portal: Sandbox) -> int:
    return portal.stats()["requests"]


def _wait_for(portal: Sandbox, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (seen := _requests(portal)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return seen


def test_next_batch_leaves_while_the_caller_still_reads_the_first(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 12_500})  # five full batches and an empty one
    client = client_for(portal, tmp_path)
    before = _requests(portal)
    rows = client.iter_all("crm.lead.list", {"select": ["ID"]})
    first = next(rows)  # the caller holds batch 1 and does not read on
    # Batch 2 was answered meanwhile, so batch 3 went out without waiting for the caller ...
    assert _wait_for(portal, before + 3, timeout=10) - before == 3
    # ... and no further: one answered batch waiting, one in flight, one in the caller's hands.
    time.sleep(0.5)
    assert _requests(portal) - before == 3
    rest = [int(row["ID"]) for row in rows]
    assert [int(first["ID"]), *rest] == list(range(1, 12_501))
    assert _requests(portal) - before == 6
