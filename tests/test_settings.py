"""Settings: env + .env + overrides, the webhook URL, the http rule, and clear ConfigErrors that
name the variable without echoing secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from b24agent.errors import ConfigError
from b24agent.settings import load_settings
from conftest import write_env

CODE = "abcdef0123456789"
TOKEN = "tok-" + "9" * 40
SECRET = "client-secret-" + "x" * 20


def load(tmp_path: Path, env: dict[str, str], **kw: Any):
    """Settings from exactly ``env`` (plus an empty .env unless one is given)."""
    env_file = kw.pop("env_file", None)
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    base = {"HOME": str(tmp_path)}
    return load_settings(env_file=str(env_file), environ={**base, **env}, **kw)


def config_error(tmp_path: Path, env: dict[str, str], **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, env, **kw)
    assert info.value.exit_code == 4
    return info.value


def test_webhook_url_is_split_into_portal_user_and_code(tmp_path: Path) -> None:
    s = load(tmp_path, {"B24_WEBHOOK_URL": f"https://acme.bitrix24.com/rest/7/{CODE}/"})
    assert (s.base_url, s.webhook_user_id, s.webhook_code) == (
        "https://acme.bitrix24.com",
        7,
        CODE,
    )
    assert s.auth_mode == "webhook"
    assert s.portal_key == "acme.bitrix24.com"
    assert CODE not in repr(s)
    assert s.secrets() == [CODE]


@pytest.mark.parametrize(
    "domain,base",
    [
        ("acme.bitrix24.com", "https://acme.bitrix24.com"),
        ("https://acme.bitrix24.com/", "https://acme.bitrix24.com"),
        ("http://127.0.0.1:8024", "http://127.0.0.1:8024"),
        ("http://localhost:9", "http://localhost:9"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_domain_forms(tmp_path: Path, domain: str, base: str) -> None:
    s = load(
        tmp_path,
        {"B24_DOMAIN": domain, "B24_WEBHOOK_USER_ID": "1", "B24_WEBHOOK_CODE": CODE},
    )
    assert s.base_url == base


@pytest.mark.parametrize("domain", ["http://acme.bitrix24.com", "http://10.0.0.5:80"])
def test_plain_http_refused_for_non_loopback(tmp_path: Path, domain: str) -> None:
    error = config_error(
        tmp_path, {"B24_DOMAIN": domain, "B24_WEBHOOK_USER_ID": "1", "B24_WEBHOOK_CODE": CODE}
    )
    assert "B24_DOMAIN" in error.message and "http" in error.message


def test_http_webhook_url_refused_for_remote_host_without_echoing_the_code(tmp_path: Path) -> None:
    error = config_error(tmp_path, {"B24_WEBHOOK_URL": f"http://acme.example/rest/1/{CODE}/"})
    assert "B24_WEBHOOK_URL" in error.message
    assert CODE not in str(error) + error.hint


@pytest.mark.parametrize(
    "url",
    [
        f"https://acme.bitrix24.com/rest/{CODE}/",  # no user id
        "https://acme.bitrix24.com/rest/1/",  # no code
        f"https://acme.bitrix24.com/api/1/{CODE}/",  # not /rest/
        "https://acme.bitrix24.com/rest/1/short/",  # code cut when pasted
        f"ftp://acme.bitrix24.com/rest/1/{CODE}/",
    ],
)
def test_malformed_webhook_url(tmp_path: Path, url: str) -> None:
    error = config_error(tmp_path, {"B24_WEBHOOK_URL": url})
    assert "B24_WEBHOOK_URL" in error.message
    assert CODE not in error.message and "short" not in error.message


def test_webhook_url_conflicting_with_separate_variables(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        {"B24_WEBHOOK_URL": f"https://a.bitrix24.com/rest/1/{CODE}/", "B24_WEBHOOK_USER_ID": "2"},
    )
    assert "B24_WEBHOOK_URL" in error.message and "B24_WEBHOOK_USER_ID" in error.message


@pytest.mark.parametrize(
    "env,named",
    [
        ({}, "B24_WEBHOOK_URL"),
        ({"B24_WEBHOOK_USER_ID": "1", "B24_WEBHOOK_CODE": CODE}, "B24_DOMAIN"),
        ({"B24_DOMAIN": "a.bitrix24.com", "B24_WEBHOOK_CODE": CODE}, "B24_WEBHOOK_USER_ID"),
        (
            {"B24_DOMAIN": "a.bitrix24.com", "B24_AUTH_MODE": "oauth", "B24_ACCESS_TOKEN": TOKEN},
            "B24_CLIENT_ID",
        ),
        (
            {
                "B24_DOMAIN": "a.bitrix24.com",
                "B24_AUTH_MODE": "oauth",
                "B24_CLIENT_ID": "local.1",
                "B24_ACCESS_TOKEN": TOKEN,
            },
            "B24_CLIENT_SECRET",
        ),
    ],
)
def test_missing_settings_are_named(tmp_path: Path, env: dict[str, str], named: str) -> None:
    error = config_error(tmp_path, env)
    assert named in error.message
    assert error.code == "CONFIG_MISSING"


HOOK = {"B24_WEBHOOK_URL": f"https://a.bitrix24.com/rest/1/{CODE}/"}


@pytest.mark.parametrize(
    "name,value",
    [
        ("B24_AUTH_MODE", "password"),
        ("B24_RATE_LIMITER", "redis"),
        ("B24_RATE_LIMITER_RATE", "fast"),
        ("B24_RATE_LIMITER_RATE", "-1"),
        ("B24_RATE_LIMITER_BURST", "0"),
        ("B24_REQUIRE_PLAN", "maybe"),
        ("B24_PLAN_TTL_SEC", "1.5"),
        ("B24_IDEMPOTENCY_TTL_SEC", "0"),
        ("B24_AUDIT_PARAMS", "everything"),
        ("B24_WEBHOOK_USER_ID", "-3"),
        ("B24_OAUTH_SERVER", "http://oauth.example"),
        ("B24_MAX_RETRIES", "lots"),
    ],
)
def test_malformed_values_are_named(tmp_path: Path, name: str, value: str) -> None:
    error = config_error(tmp_path, {**HOOK, name: value})
    assert name in error.message
    assert CODE not in error.message


@pytest.mark.parametrize(
    "name", ["B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN", "B24_CLIENT_SECRET", "B24_WEBHOOK_CODE"]
)
def test_malformed_secret_is_named_but_never_echoed(tmp_path: Path, name: str) -> None:
    bad = "a b c d e f g h"  # contains spaces: a paste accident
    error = config_error(tmp_path, {**HOOK, name: bad})
    assert name in error.message
    assert bad not in str(error) and bad not in error.hint


def test_dotenv_loaded_and_real_environment_wins(tmp_path: Path) -> None:
    env_file = write_env(
        tmp_path / "custom.env",
        f"B24_WEBHOOK_URL=https://a.bitrix24.com/rest/1/{CODE}/\n"
        "B24_RATE_LIMITER_RATE=5\n"
        "B24_RATE_LIMITER_BURST=250\n"
        "B24_PACKS=core, comms\n",
    )
    s = load(tmp_path, {"B24_RATE_LIMITER_BURST": "100"}, env_file=env_file)
    assert s.base_url == "https://a.bitrix24.com"
    assert s.rate == 5.0  # from .env
    assert s.burst == 100  # the real environment wins
    assert s.packs == ("core", "comms")


def test_the_working_folders_env_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any folder may hold a ``.env`` someone else wrote (a cloned project, another user in
    /tmp): the operator's file in the state folder is read, never ``./.env`` (review F5, F7)."""
    root = tmp_path / ".local" / "state" / "bitrix24-agent"
    root.mkdir(parents=True)
    state_env = write_env(root / ".env", f"B24_WEBHOOK_URL=https://d.bitrix24.com/rest/4/{CODE}/\n")
    project = tmp_path / "project"
    project.mkdir()
    write_env(project / ".env", "B24_OAUTH_SERVER=https://thief.example\nB24_READ_ONLY=0\n")
    monkeypatch.chdir(project)
    s = load_settings(environ={"HOME": str(tmp_path)})
    assert s.base_url == "https://d.bitrix24.com" and s.env_file == state_env
    assert s.oauth_server == "https://oauth.bitrix.info"


def test_without_b24_env_file_the_state_folder_env_file_is_read(tmp_path: Path) -> None:
    """Settings outside the skill folder: ~/.local/state/bitrix24-agent/.env by default, the
    B24_STATE_DIR root when it is set."""
    default = tmp_path / ".local" / "state" / "bitrix24-agent" / ".env"
    default.parent.mkdir(parents=True)
    write_env(default, f"B24_WEBHOOK_URL=https://d.bitrix24.com/rest/4/{CODE}/\n")
    assert load_settings(environ={"HOME": str(tmp_path)}).base_url == "https://d.bitrix24.com"
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    write_env(moved / ".env", f"B24_WEBHOOK_URL=https://m.bitrix24.com/rest/4/{CODE}/\n")
    s = load_settings(environ={"HOME": str(tmp_path), "B24_STATE_DIR": str(moved)})
    assert s.base_url == "https://m.bitrix24.com"


def test_b24_env_file_names_the_file_and_must_exist(tmp_path: Path) -> None:
    named = write_env(
        tmp_path / "portal.env", f"B24_WEBHOOK_URL=https://n.bitrix24.com/rest/5/{CODE}/\n"
    )
    environ = {"HOME": str(tmp_path), "B24_ENV_FILE": "~/portal.env"}
    assert load_settings(environ=environ).base_url == "https://n.bitrix24.com"
    named.unlink()
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert "portal.env" in info.value.message and "B24_ENV_FILE" in info.value.hint


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, HOOK, env_file=tmp_path / "nope.env")
    assert "nope.env" in error.message


def test_overrides_win_and_are_typed(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        {**HOOK, "B24_RATE_LIMITER": "file"},
        overrides={
            "B24_RATE_LIMITER": "off",
            "packs": ["core", "comms"],
            "audit_file": str(tmp_path / "a.jsonl"),
        },
    )
    assert s.rate_limiter == "off"
    assert s.packs == ("core", "comms")
    assert s.audit_file == tmp_path / "a.jsonl"


def test_unknown_override_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HOOK, overrides={"rate_limitr": "off"})
    assert "rate_limitr" in error.message


def test_state_dir_is_per_portal(tmp_path: Path) -> None:
    one = load(tmp_path, {**HOOK, "B24_STATE_DIR": str(tmp_path / "st")})
    two = load(
        tmp_path,
        {
            "B24_WEBHOOK_URL": f"http://127.0.0.1:8024/rest/1/{CODE}/",
            "B24_STATE_DIR": str(tmp_path / "st"),
        },
    )
    assert one.state_dir == tmp_path / "st" / "a.bitrix24.com"
    assert two.state_dir == tmp_path / "st" / "127.0.0.1_8024"
    assert one.rate_limiter_file.parent == one.state_dir
    assert CODE not in str(one.state_dir)


def test_state_dir_defaults_to_xdg_state_home(tmp_path: Path) -> None:
    s = load(tmp_path, {**HOOK, "XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert s.state_dir == tmp_path / "xdg" / "bitrix24-agent" / "a.bitrix24.com"
    s = load(tmp_path, HOOK)
    assert s.state_dir == tmp_path / ".local" / "state" / "bitrix24-agent" / "a.bitrix24.com"


def test_oauth_mode_inferred_and_secrets_listed(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        {
            "B24_DOMAIN": "a.bitrix24.com",
            "B24_CLIENT_ID": "local.abc",
            "B24_CLIENT_SECRET": SECRET,
            "B24_ACCESS_TOKEN": TOKEN,
            "B24_REFRESH_TOKEN": TOKEN + "r",
            "B24_APPLICATION_TOKEN": "apptoken-123456",
        },
    )
    assert s.auth_mode == "oauth"
    assert set(s.secrets()) == {SECRET, TOKEN, TOKEN + "r", "apptoken-123456"}
    assert not any(secret in repr(s) for secret in s.secrets())


def test_credentials_optional_when_not_required(tmp_path: Path) -> None:
    s = load(tmp_path, {}, require_credentials=False)
    assert s.base_url == "" and s.secrets() == []


def test_malformed_value_in_dotenv_is_named(tmp_path: Path) -> None:
    text = f"B24_RATE_LIMITER=sometimes\nB24_WEBHOOK_URL={HOOK['B24_WEBHOOK_URL']}\n"
    env_file = write_env(tmp_path / "x.env", text)
    error = config_error(tmp_path, {}, env_file=env_file)
    assert "B24_RATE_LIMITER" in error.message
