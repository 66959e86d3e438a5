"""A renamed portal answers 302 with its new address (how-to-call-rest-api/change-domen.md).

The sandbox's ``moved_to`` setting answers 302 to every ``/rest/`` request whose Host is not that
address's. The client is configured with ``localhost:PORT`` and the portal "moved" to
``127.0.0.1:PORT`` (the same server, another Host): reads follow, a write is created exactly
once (the same POST, never a GET without its body), the new address is printed once for the
operator, and a redirect to plain http elsewhere or to another path is refused with nothing sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from b24agent.errors import ConfigError
from cli_support import Cli
from client_support import client_for, secrets_of
from conftest import Sandbox


def _old_address(portal: Sandbox) -> str:
    return portal.url.replace("127.0.0.1", "localhost")


def _moved_client(portal: Sandbox, tmp_path: Path, *, oauth: bool = False):
    old = _old_address(portal)
    if oauth:
        return client_for(portal, tmp_path, oauth=True, B24_DOMAIN=old)
    old_url = portal.webhook_url.replace(portal.url, old)
    return client_for(portal, tmp_path, B24_WEBHOOK_URL=old_url)


def _notices(err: str) -> list[dict]:
    return [json.loads(line)["notice"] for line in err.splitlines() if '"notice"' in line]


@pytest.mark.parametrize("oauth", [False, True], ids=["webhook", "oauth"])
def test_reads_follow_a_renamed_portal_and_the_operator_is_told_once(
    portal: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str], oauth: bool
) -> None:
    portal.admin("settings", {"moved_to": portal.url})
    lead = int(portal.rest("crm.lead.add", {"fields": {"TITLE": "Moved"}}).json()["result"])
    client = _moved_client(portal, tmp_path, oauth=oauth)
    assert client.call("crm.lead.get", {"id": lead}).result["TITLE"] == "Moved"
    assert client.call("crm.lead.list").result[0]["ID"] == str(lead)
    assert portal.stats()["redirects"] == 1  # the second call went straight to the new address
    (notice,) = _notices(capsys.readouterr().err)
    assert notice["code"] == "PORTAL_MOVED" and notice["new_address"] == portal.url
    for secret in secrets_of(portal):
        assert secret not in json.dumps(notice)


@pytest.mark.parametrize("oauth", [False, True], ids=["webhook", "oauth"])
def test_a_write_is_created_exactly_once_with_its_params(
    portal: Sandbox, tmp_path: Path, oauth: bool
) -> None:
    portal.admin("settings", {"moved_to": portal.url})
    client = _moved_client(portal, tmp_path, oauth=oauth)
    new_id = client.call("crm.lead.add", {"fields": {"TITLE": "Created once"}}).result
    rows = portal.rest("crm.lead.list", {"select": ["ID", "TITLE"]}).json()["result"]
    assert [(int(r["ID"]), r["TITLE"]) for r in rows] == [(new_id, "Created once")]
    stats = portal.stats()
    assert stats["redirects"] == 1 and stats["by_method"]["crm.lead.add"] == 1
    assert client.requests_sent == 2  # the 302 and the one POST that ran


@pytest.mark.parametrize(
    ("moved_to", "why"),
    [
        ("http://portal.example.com", "plain-http"),
        ("https://user:pw@portal.example.com", "not a plain https URL"),
        ("{url}/elsewhere", "another path"),
    ],
)
def test_a_redirect_credentials_may_not_follow_is_refused(
    portal: Sandbox, tmp_path: Path, moved_to: str, why: str
) -> None:
    portal.admin("settings", {"moved_to": moved_to.format(url=portal.url)})
    client = _moved_client(portal, tmp_path)
    with pytest.raises(ConfigError) as info:
        client.call("crm.lead.add", {"fields": {"TITLE": "Never"}})
    assert info.value.code == "PORTAL_REDIRECT" and info.value.exit_code == 4
    assert why in info.value.message and "nothing was run" in info.value.message
    assert client.requests_sent == 1
    assert portal.stats()["by_method"].get("crm.lead.add") is None
    portal.admin("settings", {"moved_to": ""})  # the test's own look, not redirected
    assert portal.rest("crm.lead.list").json()["result"] == []
    assert portal.webhook["code"] not in info.value.message + info.value.hint


def test_cli_follows_and_prints_the_new_address_on_one_stderr_line(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("settings", {"moved_to": portal.url})
    old_url = portal.webhook_url.replace(portal.url, _old_address(portal))
    cli = Cli(tmp_path, {"B24_WEBHOOK_URL": old_url})
    params = json.dumps({"fields": {"TITLE": "From the CLI"}})
    run = cli("crm.lead.add", "--params", params, "--confirm-write")
    assert run.code == 0, run.err
    (line,) = run.err.splitlines()
    assert json.loads(line)["notice"]["new_address"] == portal.url
    assert portal.webhook["code"] not in run.err
    assert len(portal.rest("crm.lead.list").json()["result"]) == 1
