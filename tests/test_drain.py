"""guard/drain.py: who may drain the offline queue through the broker (B24_BROKER_DRAINERS).

The caller is what the kernel reported (SO_PEERCRED, as the broker passes it); the list is the
operator's. These cases need no second OS user: they run against this process's own uid and
primary group. The end-to-end measurement is tests/test_broker_worker.py.
"""

from __future__ import annotations

import grp
import os
import pwd

import pytest
from b24agent.errors import PolicyError
from b24agent.guard.drain import allowed_drain

ME = {
    "via": "broker",
    "uid": os.getuid(),
    "gid": os.getgid(),
    "user": pwd.getpwuid(os.getuid()).pw_name,
}
GROUP = grp.getgrgid(os.getgid()).gr_name
GET = ["event.offline.get"]


@pytest.mark.parametrize("entry", [ME["user"], str(ME["uid"]), f"@{GROUP}"])
def test_a_named_caller_drains_by_user_uid_or_group(entry: str) -> None:
    assert allowed_drain(ME, GET, ("someone-else", entry)) is True
    assert allowed_drain(ME, ["event.offline.clear", "event.offline.list"], (entry,)) is True


@pytest.mark.parametrize("drainers", [(), ("someone-else",), ("@no-such-group-b24",), ("99999",)])
def test_anyone_else_is_refused_naming_the_setting(drainers: tuple[str, ...]) -> None:
    with pytest.raises(PolicyError) as refused:
        allowed_drain(ME, ["crm.lead.list", "event.offline.error"], drainers)
    assert refused.value.code == "DRAIN_NOT_ALLOWED"
    assert (
        "B24_BROKER_DRAINERS" in refused.value.message and str(ME["uid"]) in refused.value.message
    )


def test_a_mixed_request_is_not_unattended_even_for_a_named_caller() -> None:
    # A queue call that carries a CRM write along keeps the approval the write needs.
    assert allowed_drain(ME, ["event.offline.get", "crm.lead.add"], (ME["user"],)) is False


def test_outside_the_broker_and_for_other_methods_nothing_changes() -> None:
    for origin in (None, {**ME, "via": "mcp"}):
        assert allowed_drain(origin, GET, ()) is False
    assert allowed_drain(ME, ["event.offline.list", "crm.lead.add"], ()) is False
