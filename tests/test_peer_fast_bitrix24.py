"""An unmodified third-party client (fast-bitrix24 from PyPI) works against the sandbox.

If a popular client that was written against real portals cannot tell the sandbox apart, our
own tests against the sandbox mean something: envelopes, paging, batch and errors are faithful.
"""

from __future__ import annotations

import logging

import pytest
from conftest import Sandbox

fast_bitrix24 = pytest.importorskip("fast_bitrix24")

SEEDED = 5000


def test_fast_bitrix24_reads_writes_and_pages_through_all_seeded_leads(portal: Sandbox) -> None:
    logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)
    assert portal.admin("seed", {"crm.lead": SEEDED})["crm.lead"] == SEEDED
    bitrix = fast_bitrix24.Bitrix(portal.webhook_url, verbose=False)

    me = bitrix.call("user.current", raw=True)["result"]
    assert me["ID"] == "1"

    new_id = bitrix.call("crm.lead.add", {"fields": {"TITLE": "via fast-bitrix24"}})
    assert isinstance(new_id, int)

    leads = bitrix.get_all("crm.lead.list", {"select": ["ID", "TITLE"]})
    ids = [int(lead["ID"]) for lead in leads]
    assert len(ids) == SEEDED + 1 and len(set(ids)) == SEEDED + 1
    assert new_id in ids
    assert {"ID", "TITLE"} <= set(leads[0])

    stats = portal.stats()
    assert stats["rate_limit_rejections"] == 0
    # 101 pages of 50 rows travel in batches: far fewer HTTP requests than pages.
    assert stats["by_method"].get("batch", 0) >= 1
    assert stats["requests"] < 30, stats
    print(f"fast-bitrix24: {len(ids)} leads, {stats['requests']} HTTP requests")
