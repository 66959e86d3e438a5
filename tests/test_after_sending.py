"""What a failure means once a write has left: "it may have run" (exit 7), never "nothing was
sent, safe to repeat"; and what the state around a call may not do to the process.

- An answer larger than B24_MAX_ANSWER_MB once decoded (a huge body, a gzip bomb) is refused
  while it is read, before it fills memory: exit 7 for a write (it reached the portal), exit 6
  for a read, not retried.
- Redis lost, or the audit log swapped for a FIFO, after the write was sent: exit 7 naming the
  idempotency key, and repeating the call under that key settles it without a second write.
- A TLS error while the answer comes (a record broken mid-answer) is exit 7, sent once: only a
  failed handshake, before any of the request left, is "not sent" (review6 R2).
- A Redis key of ours holding what we cannot read is STATE_CORRUPT (exit 4) naming the key.
- Plain redis:// is accepted only on loopback (the token pair crosses that link).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from b24agent.backends.redis_store import RedisBackend
from b24agent.errors import ConfigError, OutcomeUnknownError
from b24agent.settings import load_settings
from cli_support import Cli
from client_support import client_for, oauth_env
from conftest import Sandbox
from redis_support import RedisServer
from tls_support import TlsFront, certificate

MB = 1024 * 1024
#: Address space for a CLI run: room for the interpreter and a full-size (128 MB) answer, not
#: for the gigabyte a gzip bomb inflates to.
ADDRESS_SPACE = 1024 * MB


def _faults(portal: Sandbox, *rules: dict[str, Any]) -> None:
    portal.admin("faults", {"rules": list(rules)})


def _leads(portal: Sandbox, title: str) -> list[dict[str, Any]]:
    return portal.rest("crm.lead.list", {"filter": {"TITLE": title}}).json()["result"]


def _bomb(method: str, *, after: bool) -> dict[str, Any]:
    """512 MB of JSON-ish text gzip-compressed to 2 MB, as a 200 answer to ``method``: more
    than the process may hold under ADDRESS_SPACE when read whole."""
    return {
        "method": method,
        "status": 200,
        "content_type": "application/json",
        "body": "a" * MB,
        "repeat": 512,
        "gzip": True,
        "after": after,
        "times": 1,
    }


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.fixture
def cli(portal: Sandbox, tmp_path: Path) -> Cli:
    return Cli.on_webhook(portal, tmp_path)


# --- F4: huge answers --------------------------------------------------------------------------


def test_a_gzip_bomb_answering_a_write_is_exit_7_within_bounded_memory(
    portal: Sandbox, cli: Cli
) -> None:
    _faults(portal, _bomb("crm.lead.add", after=True))
    params = json.dumps({"fields": {"TITLE": "bombed"}})
    run = cli.finish(
        cli.popen_with(_limit_memory, "crm.lead.add", "--params", params, "--confirm-write")
    )
    assert run.code == 7, run.err
    error = run.error()
    assert error["code"] == "ANSWER_TOO_LARGE" and not error["retryable"]
    assert "128 MB" in error["message"]
    assert len(_leads(portal, "bombed")) == 1  # it did run: "safe to repeat" would write twice
    # The auto key was left unknown: the same call again finds the lead, sends nothing.
    _faults(portal)
    again = cli("crm.lead.add", "--params", params, "--confirm-write")
    assert again.code == 0, again.err
    assert len(_leads(portal, "bombed")) == 1 and portal.sent("crm.lead.add") == 1


def test_a_gzip_bomb_answering_a_read_is_exit_6_and_not_retried(portal: Sandbox, cli: Cli) -> None:
    _faults(portal, {**_bomb("user.current", after=False), "times": 5})
    run = cli.finish(cli.popen_with(_limit_memory, "user.current"))
    assert run.code == 6, run.err
    assert run.error()["code"] == "ANSWER_TOO_LARGE"
    assert portal.sent("user.current") == 1  # the same request would get the same answer


def test_answers_are_capped_decoded_by_the_setting(portal: Sandbox, tmp_path: Path) -> None:
    """Under the cap a gzip answer reads as usual; over it (1 MB here) it is refused, though
    only a few kilobytes crossed the wire."""
    small = {"result": {"ID": "7", "NAME": "b" * 500_000}}
    _faults(
        portal,
        {"method": "user.current", "status": 200, "body": json.dumps(small), "gzip": True},
    )
    with client_for(portal, tmp_path, max_answer_mb=1) as client:
        assert client.call("user.current").result == small["result"]
        big = {"result": {"ID": "7", "NAME": "b" * (MB + 1)}}
        _faults(portal, {"method": "crm.lead.add", "status": 200, "body": json.dumps(big)})
        with pytest.raises(OutcomeUnknownError) as caught:
            client.call("crm.lead.add", {"fields": {"TITLE": "capped"}})
        assert caught.value.code == "ANSWER_TOO_LARGE"
        assert client.writes_out == 1 and client.requests_sent == 2


def test_a_refused_write_does_not_count_as_out(portal: Sandbox, tmp_path: Path) -> None:
    """writes_out counts writes that may have run: a refusal by the portal takes it back."""
    _faults(portal, {"method": "crm.lead.add", "error": "ACCESS_DENIED", "status": 403})
    with client_for(portal, tmp_path) as client:
        with pytest.raises(Exception, match="ACCESS_DENIED"):
            client.call("crm.lead.add", {"fields": {"TITLE": "refused"}})
        assert client.requests_sent == 1 and client.writes_out == 0


def test_a_gzip_bomb_from_the_token_server_is_refused_unread(
    portal: Sandbox, tmp_path: Path
) -> None:
    """The refresh's answer is capped too (1 MB: a token pair is a few hundred bytes): the
    bomb is a malformed answer, the refresh token was not spent, and the retry refreshes."""
    cli = Cli(tmp_path, {**oauth_env(portal, tmp_path / "state"), "B24_SERVER": "off"})
    assert cli("user.current").code == 0  # the token store holds the pair
    portal.admin("expire-tokens", {})
    _faults(portal, _bomb("oauth.token", after=False))
    run = cli.finish(cli.popen_with(_limit_memory, "user.current"))
    assert run.code == 0, run.err
    stats = portal.stats()
    assert (stats["failed_refreshes"], stats["token_refreshes"]) == (1, 1)


# --- F6: a local failure after the write left -------------------------------------------------


def test_audit_log_swapped_for_a_fifo_mid_write_is_exit_7(portal: Sandbox, cli: Cli) -> None:
    first = cli("user.current")  # the audit log exists
    assert first.code == 0, first.err
    (audit,) = cli.state.glob("*/audit.jsonl")
    kept = audit.read_bytes()

    def swap() -> None:
        audit.unlink()
        os.mkfifo(audit, 0o600)

    _faults(portal, {"method": "crm.lead.add", "error": None, "delay_ms": 1500})
    params = json.dumps({"fields": {"TITLE": "fifo"}})
    args = ("crm.lead.add", "--params", params, "--confirm-write", "--idempotency-key", "fifo1")
    swapper = portal.once_sent("crm.lead.add", swap)
    run = cli(*args)
    swapper.join()
    assert run.code == 7, run.err
    error = run.error()
    assert error["code"] == "STATE_UNSAFE" and "'fifo1'" in error["hint"]
    assert "was sent to the portal" in error["message"]
    assert len(_leads(portal, "fifo")) == 1
    # With the log restored, the same call under the key gives the stored result, sends nothing.
    audit.unlink()
    audit.write_bytes(kept)
    _faults(portal)
    again = cli(*args, "--output", "result")
    assert again.code == 0, again.err
    assert [int(again.json())] == [int(lead["ID"]) for lead in _leads(portal, "fifo")]
    assert portal.sent("crm.lead.add") == 1


def test_a_tls_error_while_the_answer_comes_is_exit_7_and_sent_once(
    portal: Sandbox, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl for the certificate")
    cert, key = certificate(tmp_path)
    front = TlsFront(int(portal.url.rsplit(":", 1)[1]), cert, key, break_answers=True)
    hook = f"https://127.0.0.1:{front.port}/rest/{portal.webhook['user_id']}/"
    hook += f"{portal.webhook['code']}/"
    cli = Cli(
        tmp_path,
        {"B24_WEBHOOK_URL": hook, "B24_SERVER": "off", "REQUESTS_CA_BUNDLE": str(cert)},
    )
    try:
        # A handshake that fails (the certificate is not trusted) is "not sent", rightly ...
        refused = cli.with_env(REQUESTS_CA_BUNDLE="")(
            "crm.lead.add", "--params", '{"fields": {"TITLE": "tls-mid"}}', "--confirm-write"
        )
        assert refused.code == 6 and refused.error()["code"] == "TLS_FAILED", refused.err
        assert portal.sent("crm.lead.add") == 0
        # ... a record broken once the request left is not.
        run = cli(
            "crm.lead.add",
            "--params",
            json.dumps({"fields": {"TITLE": "tls-mid"}}),
            "--confirm-write",
        )
    finally:
        front.close()
    assert run.code == 7, run.err
    error = run.error()
    assert error["code"] == "NETWORK_ERROR" and not error["retryable"]
    assert "not sent" not in run.err
    # The portal ran it once: it was not taken for a failed handshake and sent again.
    assert len(_leads(portal, "tls-mid")) == 1 and portal.sent("crm.lead.add") == 1


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


def _redis_cli(portal: Sandbox, tmp_path: Path, url: str, **env: str) -> Cli:
    return Cli(
        tmp_path,
        {
            "B24_WEBHOOK_URL": portal.webhook_url,
            "B24_SERVER": "off",
            "B24_STATE_BACKEND": url,
            **env,
        },
    )


def test_redis_lost_after_the_write_was_sent_is_exit_7(
    portal: Sandbox, tmp_path: Path, redis_server: RedisServer
) -> None:
    cli = _redis_cli(portal, tmp_path, redis_server.url, B24_READ_TIMEOUT="4")
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    _faults(portal, {"method": "crm.lead.add", "error": None, "delay_ms": 2000})
    params = json.dumps({"fields": {"TITLE": "redis-mid"}})
    args = ("crm.lead.add", "--params", params, "--confirm-write", "--idempotency-key", "mid1")
    stopper = portal.once_sent("crm.lead.add", lambda: os.kill(pid, signal.SIGSTOP))
    run = cli(*args)
    stopper.join()
    os.kill(pid, signal.SIGCONT)
    assert run.code == 7, run.err
    error = run.error()
    assert error["code"] == "STATE_BACKEND_UNREACHABLE" and not error["retryable"]
    assert "nothing was sent" not in run.err and "'mid1'" in error["hint"]
    assert len(_leads(portal, "redis-mid")) == 1
    # Once the in-flight window (the read timeout) is over, the same call settles the key by
    # the lead's ORIGIN_ID: no second lead.
    _faults(portal)
    time.sleep(4.2)
    again = cli(*args)
    assert again.code == 0, again.err
    assert len(_leads(portal, "redis-mid")) == 1 and portal.sent("crm.lead.add") == 1


def test_redis_unreachable_before_sending_stays_exit_6(portal: Sandbox, tmp_path: Path) -> None:
    cli = _redis_cli(portal, tmp_path, RedisServer(tmp_path / "redis").url)  # never started
    run = cli("crm.lead.add", "--params", '{"fields": {"TITLE": "x"}}', "--confirm-write")
    assert run.code == 6, run.err
    assert run.error()["code"] == "STATE_BACKEND_UNREACHABLE"
    assert portal.sent("crm.lead.add") == 0


# --- F9: corrupt Redis keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,damage",
    [
        ("limiter:tat", lambda r, k: r.set(k, "not-a-number-SECRETISH")),
        ("limiter:tat", lambda r, k: r.hset(k, "x", "1")),
        ("limiter:methods", lambda r, k: r.set(k, "x")),
        ("limiter:methods", lambda r, k: r.hset(k, "user|user.current", "garbage")),
    ],
    ids=["tat-not-a-number", "tat-a-hash", "methods-a-string", "methods-entry-garbage"],
)
def test_a_corrupt_redis_key_is_state_corrupt_naming_it(
    portal: Sandbox, tmp_path: Path, redis_server: RedisServer, key: str, damage: Any
) -> None:
    cli = _redis_cli(portal, tmp_path, redis_server.url, B24_RATE_LIMITER="file")  # in Redis
    assert cli("user.current").code == 0
    client = redis_server.client()
    (tat,) = client.scan_iter(match="b24:*:limiter:tat")
    name = tat.decode().removesuffix("limiter:tat") + key
    client.delete(name)
    damage(client, name)
    for _ in range(2):  # not transient: the same answer every time
        run = cli("user.current")
        assert run.code == 4, run.err
        error = run.error()
        assert error["code"] == "STATE_CORRUPT" and not error["retryable"]
        assert name in error["message"] and "SECRETISH" not in run.err
    client.delete(name)
    assert cli("user.current").code == 0


# --- F11: plain redis:// only on loopback -----------------------------------------------------


def _backend(tmp_path: Path, url: str) -> str:
    empty = tmp_path / "empty.env"
    empty.touch()
    env = {
        "B24_WEBHOOK_URL": "https://x.bitrix24.com/rest/1/abcdefgh12345678/",
        "B24_STATE_BACKEND": url,
    }
    return load_settings(env_file=str(empty), environ=env).state_backend


@pytest.mark.parametrize(
    "url",
    ["redis://:pw@10.1.2.3:6379/0", "redis://redis.internal:6379/0", "redis://[2001:db8::1]/0"],
)
def test_plain_redis_to_a_remote_host_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _backend(tmp_path, url)
    assert caught.value.code == "CONFIG_INSECURE" and caught.value.exit_code == 4
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://:pw@redis.internal:6379/0",
        "redis://:pw@127.0.0.1:6379/0",
        "redis://localhost/1?password=pw",
        "redis://:pw@[::1]:6379/0",
    ],
)
def test_tls_or_loopback_redis_is_accepted(tmp_path: Path, url: str) -> None:
    assert _backend(tmp_path, url) == url


def test_tls_redis_checks_the_certificates_host_name() -> None:
    """redis-py 5.x (which requirements.txt allows) checks no host name unless told to."""
    backend = RedisBackend("rediss://:pw@redis.internal:6379/0", portal="p")
    assert backend._keys.client.connection_pool.connection_kwargs["ssl_check_hostname"] is True
    plain = RedisBackend("redis://127.0.0.1:6379/0", portal="p")
    assert "ssl_check_hostname" not in plain._keys.client.connection_pool.connection_kwargs
