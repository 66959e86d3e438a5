"""The library as a developer imports it: only the names ``b24agent`` exports, against the real
sandbox over HTTP. If a regroup moves a module, this is the test that must not notice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import b24agent
import pytest
from b24agent import (
    B24Error,
    Bitrix24Client,
    ConfigError,
    CorruptStateError,
    NotFoundError,
    Settings,
    load_settings,
)
from conftest import Sandbox


def test_a_developer_adds_reads_and_misses_a_lead_with_public_names(
    portal: Sandbox, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("")
    environ = {"B24_WEBHOOK_URL": portal.webhook_url, "B24_STATE_DIR": str(tmp_path)}
    settings = load_settings(env_file=str(tmp_path / ".env"), environ=environ)
    assert isinstance(settings, Settings)
    with Bitrix24Client(settings) as client:
        lead_id = client.call("crm.lead.add", {"fields": {"TITLE": "Public API"}}).result
        assert client.call("crm.lead.get", {"id": lead_id}).result["TITLE"] == "Public API"
        with pytest.raises(NotFoundError) as missing:
            client.call("crm.lead.get", {"id": 999999})
    assert isinstance(missing.value, B24Error) and missing.value.exit_code == 1


def test_the_error_tree_is_exported_with_its_exit_codes() -> None:
    assert issubclass(CorruptStateError, ConfigError) and CorruptStateError.exit_code == 4
    assert set(b24agent.__all__) >= {"Bitrix24Client", "Settings", "load_settings", "B24Error"}
    for name in b24agent.__all__:
        assert getattr(b24agent, name) is not None
    with pytest.raises(AttributeError):
        _ = b24agent.pipeline  # internal modules are not part of the public face


def test_importing_the_package_imports_nothing_heavy() -> None:
    """``b24``'s warm-start path imports this package: the public names must cost nothing
    until used."""
    probe = (
        "import sys, b24agent; "
        "print(sorted(m for m in sys.modules if m.startswith(('b24agent.', 'requests'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
