"""The offline worker as its users run it: a subprocess against the sandbox portal over HTTP."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_worker_support import (
    duplicates,
    error_of,
    handled_counts,
    jsonl,
    oauth_call,
    open_dlq,
    queue_rows,
    run_worker,
    seed_events,
    start_worker,
    summary_of,
    terminate,
    wait_for_lines,
    wait_for_stderr,
    worker_env,
)

FLAKY = "test_worker_support:flaky_sink"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _checkpoint(state: Path) -> dict:
    [path] = state.glob("*/offline-worker/checkpoint.json")
    return json.loads(path.read_text())


def test_drain_hands_every_event_to_the_sink_and_clears_the_queue(portal, state, tmp_path):
    ids = seed_events(portal, 120)
    sink = tmp_path / "inbox.jsonl"
    before = portal.stats()["requests"]

    result = run_worker(worker_env(portal, state), "--drain", "--limit", "50", "--sink", str(sink))

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["reserved"] == summary["handled"] == summary["cleared"] == 120
    assert summary["dead_lettered"] == summary["rejected"] == 0
    assert summary["queue_empty"] is True
    lines = jsonl(sink)
    assert sorted(str(line["event"]["ID"]) for line in lines) == sorted(ids)
    assert len({line["delivery_id"] for line in lines}) == 120
    assert {line["event_name"] for line in lines} == {"ONCRMLEADUPDATE"}
    assert queue_rows(portal) == []
    # 3 reservations of 50, 50 and 20 rows: a get and a clear each, an empty get, the adopt scan.
    assert portal.stats()["requests"] - before <= 9
    secrets = [portal.oauth[k] for k in ("access_token", "refresh_token", "client_secret")]
    written = result.stdout + result.stderr + sink.read_text()
    written += "".join(p.read_text() for p in state.rglob("checkpoint.json*"))
    assert not [s for s in secrets if s in written]


def test_once_takes_one_reservation_and_event_filters_by_name(portal, state, tmp_path):
    seed_events(portal, 30)
    sink = tmp_path / "inbox.jsonl"
    env = worker_env(portal, state)

    other = run_worker(env, "--drain", "--event", "onCrmDealAdd", "--sink", str(sink))
    once = run_worker(
        env, "--once", "--limit", "10", "--event", "ONCRMLEADUPDATE", "--sink", str(sink)
    )

    assert other.returncode == once.returncode == 0, other.stderr + once.stderr
    assert summary_of(other.stdout)["reserved"] == 0
    summary = summary_of(once.stdout)
    assert summary["reserved"] == summary["handled"] == summary["cleared"] == 10
    assert summary["queue_empty"] is False
    assert len(jsonl(sink)) == 10
    rows = queue_rows(portal)
    assert len(rows) == 20 and all(row["PROCESS_ID"] == "" for row in rows)


def test_an_expired_access_token_is_refreshed_and_the_drain_goes_on(portal, state, tmp_path):
    seed_events(portal, 10)
    portal.admin("expire-tokens", {})

    result = run_worker(worker_env(portal, state), "--drain", "--sink", str(tmp_path / "s.jsonl"))

    assert result.returncode == 0, result.stderr
    assert summary_of(result.stdout)["handled"] == 10
    assert portal.stats()["token_refreshes"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_event_in_hand_checkpoints_and_exits_0(
    portal, state, tmp_path, sig
):
    seed_events(portal, 40)
    sink = tmp_path / "handled.jsonl"
    env = worker_env(portal, state, WORKER_TEST_SINK=str(sink), WORKER_TEST_DELAY="0.05")
    proc = start_worker(env, "--handler", FLAKY, "--sleep", "30")

    assert wait_for_lines(sink, 5, proc, timeout=30) >= 5
    out, err = terminate(proc, sig)

    assert proc.returncode == 0, err
    summary = summary_of(out)
    assert summary["stopped"] is True
    handled = summary["handled"]
    assert 5 <= handled < 40 and handled == len(jsonl(sink)) == summary["cleared"]
    [reservation] = _checkpoint(state)["reservations"]
    assert len(reservation["events"]) == 40 - handled
    rows = queue_rows(portal)
    assert len(rows) == 40 - handled
    assert {row["PROCESS_ID"] for row in rows} == {reservation["process_id"]}


def test_restart_resumes_the_saved_reservation_without_adopting_it(portal, state, tmp_path):
    ids = seed_events(portal, 40)
    sink = tmp_path / "handled.jsonl"
    env = worker_env(portal, state, WORKER_TEST_SINK=str(sink), WORKER_TEST_DELAY="0.02")
    proc = start_worker(env, "--handler", FLAKY, "--drain")
    wait_for_lines(sink, 10, proc, timeout=30)
    proc.kill()  # SIGKILL: no chance to clear or checkpoint anything more
    proc.communicate()
    saved = _checkpoint(state)["reservations"][0]["process_id"]
    assert {row["PROCESS_ID"] for row in queue_rows(portal)} == {saved}

    result = run_worker(
        worker_env(portal, state, WORKER_TEST_SINK=str(sink)), "--handler", FLAKY, "--drain"
    )

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["adopted"] == 0 and summary["resumed"] > 0
    counts = handled_counts(sink)
    assert sorted(counts) == sorted(ids)
    assert duplicates(counts) <= 1
    assert queue_rows(portal) == []


def test_rows_reserved_without_a_checkpoint_are_adopted(portal, state, tmp_path):
    ids = seed_events(portal, 60)
    # A worker that died right after event.offline.get, before writing its checkpoint:
    taken = oauth_call(portal, "event.offline.get", {"clear": 0, "limit": 25})
    assert taken["process_id"] and len(taken["events"]) == 25
    sink = tmp_path / "inbox.jsonl"

    result = run_worker(worker_env(portal, state), "--drain", "--sink", str(sink))

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["adopted"] == 25 and summary["reserved"] == 35
    assert sorted(str(line["event"]["ID"]) for line in jsonl(sink)) == sorted(ids)
    assert queue_rows(portal) == []


def test_orphans_past_the_first_scan_page_are_adopted_and_the_first_get_is_not(
    portal, state, tmp_path
):
    """The scan's first page rides with the first get; a full page means more orphans, so
    every page is read, where that get's own rows show too: they are ours, not orphans."""
    ids = seed_events(portal, 300)
    for limit in (70, 50):  # two workers that died right after event.offline.get
        oauth_call(portal, "event.offline.get", {"clear": 0, "limit": limit})
    sink = tmp_path / "inbox.jsonl"

    result = run_worker(worker_env(portal, state), "--drain", "--limit", "100", "--sink", str(sink))

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["adopted"] == 120 and summary["reserved"] == 180
    counts = handled_counts(sink)
    assert sorted(counts) == sorted(ids) and duplicates(counts) == 0
    assert queue_rows(portal) == []


def test_a_refused_scan_in_the_opening_batch_keeps_the_rows_its_get_reserved(
    portal, state, tmp_path
):
    """The orphan scan refused inside the batch that also reserved rows: the reservation is
    saved before the error counts, the retried run scans again and adopts the dead worker's
    rows, and every event reaches the sink once."""
    ids = seed_events(portal, 90)
    taken = oauth_call(portal, "event.offline.get", {"clear": 0, "limit": 20})
    refused = {"method": "event.offline.list", "error": "INTERNAL_SERVER_ERROR", "times": 1}
    portal.admin("faults", {"rules": [refused]})
    sink = tmp_path / "inbox.jsonl"
    env = worker_env(portal, state, B24_RETRY_BASE_SEC="0.01")

    result = run_worker(env, "--drain", "--limit", "30", "--sink", str(sink))

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["portal_retries"] == 1
    assert summary["adopted"] == len(taken["events"]) == 20 and summary["reserved"] == 70
    counts = handled_counts(sink)
    assert sorted(counts) == sorted(ids) and duplicates(counts) == 0
    assert queue_rows(portal) == []


def test_no_adopt_leaves_foreign_reservations_alone(portal, state, tmp_path):
    seed_events(portal, 30)
    taken = oauth_call(portal, "event.offline.get", {"clear": 0, "limit": 10})

    result = run_worker(
        worker_env(portal, state), "--drain", "--no-adopt", "--sink", str(tmp_path / "s.jsonl")
    )

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["adopted"] == 0 and summary["handled"] == 20
    rows = queue_rows(portal)
    assert len(rows) == 10 and {row["PROCESS_ID"] for row in rows} == {taken["process_id"]}


def test_failed_events_go_to_the_dlq_are_flagged_and_replay(portal, state, tmp_path):
    ids = seed_events(portal, 6)
    failing = ids[1::2]
    sink, dlq = tmp_path / "handled.jsonl", tmp_path / "dlq.jsonl"
    env = worker_env(
        portal, state, WORKER_TEST_SINK=str(sink), WORKER_TEST_FAIL_IDS=",".join(failing)
    )

    result = run_worker(
        env,
        "--drain",
        "--handler",
        FLAKY,
        "--max-retries",
        "2",
        "--retry-delay",
        "0",
        "--dlq-file",
        str(dlq),
    )

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["handled"] == 3 and summary["cleared"] == 3
    assert summary["dead_lettered"] == summary["flagged"] == 3
    assert summary["retried"] == 6 and summary["dlq_open"] == 3
    entries = open_dlq(dlq)
    assert sorted(str(e["event"]["ID"]) for e in entries.values()) == sorted(failing)
    assert {e["attempts"] for e in entries.values()} == {3}
    assert all("always fails" in e["reason"] for e in entries.values())
    rows = queue_rows(portal)
    assert sorted(str(r["ID"]) for r in rows) == sorted(failing)
    assert all(int(r["ERROR"]) == 1 and not r["PROCESS_ID"] for r in rows)

    replay_sink = tmp_path / "replayed.jsonl"
    replay = run_worker(
        worker_env(portal, state),
        "--replay-dlq",
        "--sink",
        str(replay_sink),
        "--dlq-file",
        str(dlq),
    )

    assert replay.returncode == 0, replay.stderr
    replayed = summary_of(replay.stdout)
    assert replayed["replayed"] == 3 and replayed["cleared"] == 3 and replayed["dlq_open"] == 0
    lines = jsonl(replay_sink)
    assert {line["delivery_id"] for line in lines} == set(entries)
    assert {line["source"] for line in lines} == {"replay"}
    assert queue_rows(portal) == []
    assert open_dlq(dlq) == {}


HANDLER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    event = json.load(sys.stdin)["event"]
    action = {"1": 0, "2": 65, "3": 75}.get(str(event["ID"]))
    if action is None:
        time.sleep(30)
    print("detail for", event["ID"], file=sys.stderr)
    sys.exit(action)
    """
)


def test_handler_cmd_exit_codes(portal, state, tmp_path):
    seed_events(portal, 4)
    script = tmp_path / "handler.py"
    script.write_text(HANDLER_SCRIPT)
    dlq = tmp_path / "dlq.jsonl"

    result = run_worker(
        worker_env(portal, state),
        "--drain",
        "--handler-cmd",
        f"{sys.executable} {script}",
        "--handler-timeout",
        "0.5",
        "--max-retries",
        "1",
        "--retry-delay",
        "0",
        "--dlq-file",
        str(dlq),
    )

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["handled"] == 1 and summary["dead_lettered"] == 3
    assert summary["retried"] == 2  # exit 75 and the timeout retry once; exit 65 never does
    reasons = {str(e["event"]["ID"]): e for e in open_dlq(dlq).values()}
    assert reasons["2"]["attempts"] == 1 and "permanent failure" in reasons["2"]["reason"]
    assert "code 65" in reasons["2"]["reason"] and "detail for 2" in reasons["2"]["reason"]
    assert reasons["3"]["attempts"] == 2 and "code 75" in reasons["3"]["reason"]
    assert reasons["4"]["attempts"] == 2 and "timed out" in reasons["4"]["reason"]
    assert sorted(str(r["ID"]) for r in queue_rows(portal)) == ["2", "3", "4"]


def test_second_worker_for_the_same_portal_is_refused(portal, state, tmp_path):
    env = worker_env(portal, state)
    first = start_worker(env, "--sleep", "30", "--sink", str(tmp_path / "a.jsonl"))
    try:
        wait_for_stderr(first, "worker started")
        second = run_worker(env, "--drain", "--sink", str(tmp_path / "b.jsonl"))
    finally:
        out, _ = terminate(first)

    assert second.returncode == 5
    error = error_of(second.stderr)
    assert error["code"] == "WORKER_RUNNING" and "already running" in error["message"]
    assert second.stdout == ""
    assert first.returncode == 0 and summary_of(out)["stopped"] is True


def test_corrupt_state_file_is_reported_and_moved_aside(portal, state, tmp_path):
    state_file = tmp_path / "checkpoint.json"
    state_file.write_text('{"version": 1, "reservations": [')

    result = run_worker(worker_env(portal, state), "--drain", "--state-file", str(state_file))

    assert result.returncode == 4
    error = error_of(result.stderr)
    assert error["code"] == "STATE_CORRUPT" and str(state_file) in error["message"]
    assert "adopts" in error["hint"]
    assert not state_file.exists() and list(tmp_path.glob("checkpoint.json.corrupt-*"))


def test_a_corrupt_journal_is_moved_aside_and_the_next_start_recovers(portal, state, tmp_path):
    ids = seed_events(portal, 12)
    sink, state_file = tmp_path / "inbox.jsonl", tmp_path / "checkpoint.json"
    env = worker_env(portal, state)
    taken = oauth_call(portal, "event.offline.get", {"clear": 0, "limit": 5})
    journal = tmp_path / "checkpoint.json.journal"
    journal.write_text(f'{{"pid": "{taken["process_id"]}", "id": "1"}}\ngarbage\n')

    broken = run_worker(env, "--drain", "--state-file", str(state_file), "--sink", str(sink))
    again = run_worker(env, "--drain", "--state-file", str(state_file), "--sink", str(sink))

    assert broken.returncode == 4
    error = error_of(broken.stderr)
    assert error["code"] == "STATE_CORRUPT" and "moved aside" in error["message"]
    assert list(tmp_path.glob("checkpoint.json.journal.corrupt-*"))
    assert again.returncode == 0, again.stderr
    assert summary_of(again.stdout)["adopted"] == 5
    assert sorted(str(line["event"]["ID"]) for line in jsonl(sink)) == sorted(ids)


def test_a_portal_that_keeps_failing_ends_the_drain_with_exit_6(portal, state, tmp_path):
    seed_events(portal, 3)
    portal.admin("faults", {"rules": [{"method": "event.offline.*", "status": 500}]})
    env = worker_env(
        portal, state, B24_RETRY_BASE_SEC="0.01", B24_RETRY_MAX_SEC="0.05", B24_MAX_RETRIES="1"
    )

    result = run_worker(env, "--drain", "--sink", str(tmp_path / "s.jsonl"))

    assert result.returncode == 6
    error = error_of(result.stderr)
    assert error["retryable"] is True and error["code"] == "INTERNAL_SERVER_ERROR"
    summary = summary_of(result.stdout)
    assert summary["portal_retries"] == 5 and summary["handled"] == 0
    portal.admin("faults", {"rules": []})
    assert len(queue_rows(portal)) == 3


def test_missing_oauth_settings_are_one_line_and_exit_4(portal, state):
    env = worker_env(portal, state)
    del env["B24_CLIENT_SECRET"]

    result = run_worker(env, "--drain")

    assert result.returncode == 4
    assert "B24_CLIENT_SECRET" in error_of(result.stderr)["message"]
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


@pytest.mark.parametrize("mode", [["--drain"], ["--once"], ["--replay-dlq"], ["--sleep", "1"]])
def test_the_operators_read_only_refuses_every_mode_before_anything_is_sent(
    portal, state, tmp_path, mode
):
    seeded = seed_events(portal, 5)
    env_file = tmp_path / "operator.env"
    env_file.write_text("B24_READ_ONLY=1\n")
    before = portal.stats()

    result = run_worker(worker_env(portal, state), *mode, "--env-file", str(env_file))

    assert result.returncode == 3, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    error = error_of(result.stderr)
    assert error["code"] == "READ_ONLY" and "B24_READ_ONLY=1" in error["message"]
    assert "unset B24_READ_ONLY" not in error["hint"]
    after = portal.stats()
    assert (after["requests"], after["by_method"]) == (before["requests"], before["by_method"])
    assert sorted(str(row["ID"]) for row in queue_rows(portal)) == sorted(seeded)
    assert not list(state.rglob("offline-worker")), "the refused worker touched its state"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--handler", "no_such_module_here:handle"], "cannot import"),
        (["--handler", "json"], "MODULE:FUNCTION"),
        (["--handler-cmd", "/no/such/program --x"], "not found"),
        (["--limit", "0"], "at least 1"),
        (["--once", "--drain"], "not allowed with"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(portal, state, flags, needle):
    result = run_worker(worker_env(portal, state), *flags)

    assert result.returncode == 2
    assert needle in error_of(result.stderr)["message"]
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_webhook_auth_is_refused_with_exit_4(portal, state):
    env = worker_env(portal, state)
    for key in (
        "B24_AUTH_MODE",
        "B24_CLIENT_ID",
        "B24_CLIENT_SECRET",
        "B24_ACCESS_TOKEN",
        "B24_REFRESH_TOKEN",
        "B24_DOMAIN",
    ):
        env.pop(key)
    env["B24_WEBHOOK_URL"] = portal.webhook_url

    result = run_worker(env, "--drain")

    assert result.returncode == 4
    error = error_of(result.stderr)
    assert "OAuth" in error["message"] and portal.webhook["code"] not in result.stderr


def test_help_documents_flags_exit_codes_and_the_handler_contract(portal, state):
    result = run_worker(worker_env(portal, state), "--help")

    assert result.returncode == 0
    for needle in (
        "--handler-cmd",
        "--replay-dlq",
        "--no-adopt",
        "exit codes",
        "65",
        "delivery_id",
        "PermanentFailure",
        "another worker",
        "B24_READ_ONLY",
    ):
        assert needle in result.stdout


def _notice_setup(portal, proc) -> None:
    """Bind the worker's notice URL and an offline handler, once the worker sleeps on an empty
    queue, then change a lead so the portal queues a row and posts ONOFFLINEEVENT."""
    url = wait_for_stderr(proc, "listening for ONOFFLINEEVENT").split()[-1]
    wait_for_stderr(proc, "queue empty")
    oauth_call(portal, "event.bind", {"event": "ONOFFLINEEVENT", "handler": url})
    oauth_call(portal, "event.bind", {"event": "ONCRMLEADADD", "event_type": "offline"})
    assert portal.rest("crm.lead.add", {"fields": {"TITLE": "notice"}}).status_code == 200


def test_a_notice_with_a_wrong_application_token_is_refused_and_wakes_nothing(
    portal, state, tmp_path
):
    sink = tmp_path / "inbox.jsonl"
    env = worker_env(portal, state, B24_APPLICATION_TOKEN="not-the-app-token-0123")
    proc = start_worker(
        env, "--sleep", "60", "--listen", "127.0.0.1:0", "--sink", str(sink), "--log-level", "debug"
    )
    _notice_setup(portal, proc)
    deliveries = portal.admin("events-delivered", {"wait": 10})["deliveries"]
    out, err = terminate(proc)

    assert [d["status"] for d in deliveries if d["event"] == "ONOFFLINEEVENT"] == [403]
    assert proc.returncode == 0
    summary = summary_of(out)
    assert summary["rejected_notices"] == 1 and summary["notices"] == 0
    assert summary["handled"] == summary["cleared"] == 0
    [row] = queue_rows(portal)
    assert row["PROCESS_ID"] == "" and row["EVENT_NAME"] == "ONCRMLEADADD"
    assert jsonl(sink) == []
    assert "application_token does not match" in err
    assert portal.oauth["application_token"] not in out + err


def test_a_valid_notice_wakes_the_sleeping_worker(portal, state, tmp_path):
    sink = tmp_path / "inbox.jsonl"
    env = worker_env(portal, state, B24_APPLICATION_TOKEN=portal.oauth["application_token"])
    proc = start_worker(
        env, "--sleep", "60", "--listen", "127.0.0.1:0", "--sink", str(sink), "--log-level", "debug"
    )
    _notice_setup(portal, proc)
    # Well before the 60 s sleep ends: only the notice can have woken it.
    seen = wait_for_lines(sink, 1, proc, timeout=20)
    out, err = terminate(proc)

    assert seen == 1
    summary = summary_of(out)
    assert summary["notices"] == 1 and summary["handled"] == 1
    assert jsonl(sink)[0]["event"]["EVENT_NAME"] == "ONCRMLEADADD"
    assert queue_rows(portal) == []
    # The notice carried a fresh OAuth pair (64 hex digits each in the sandbox): neither the
    # worker's output nor its sink shows it.
    assert not re.search(r"[0-9a-f]{64}", out + err + sink.read_text())


def test_replayed_payloads_carrying_a_wrong_token_are_neither_handled_nor_closed(
    portal, state, tmp_path
):
    token = portal.oauth["application_token"]
    dlq, sink = tmp_path / "dlq.jsonl", tmp_path / "replayed.jsonl"
    entries = [
        {
            "status": "dead",
            "delivery_id": f"d{n}",
            "reason": "x",
            "attempts": 1,
            "process_id": None,
            "event": {
                "ID": str(n),
                "EVENT_NAME": "ONCRMLEADADD",
                "MESSAGE_ID": f"m{n}",
                "auth": {"application_token": value},
            },
        }
        for n, value in ((1, token), (2, "forged-token-000000"))
    ]
    dlq.write_text("".join(json.dumps(e) + "\n" for e in entries))
    env = worker_env(portal, state, B24_APPLICATION_TOKEN=token)

    result = run_worker(env, "--replay-dlq", "--dlq-file", str(dlq), "--sink", str(sink))

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["replayed"] == 1 and summary["rejected"] == 1
    [line] = jsonl(sink)
    assert line["delivery_id"] == "d1" and "auth" not in line["event"]
    assert set(open_dlq(dlq)) == {"d2"}
    assert "application_token does not match" in result.stderr
    assert token not in result.stdout + result.stderr


def test_listen_needs_the_application_token(portal, state):
    result = run_worker(worker_env(portal, state), "--listen", "127.0.0.1:0")

    assert result.returncode == 2
    assert "application_token" in error_of(result.stderr)["message"]


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    return host, int(port)


def _raw_post(url: str, head: bytes) -> bytes:
    with socket.create_connection(_address(url), timeout=10) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        return conn.recv(200)


def test_the_notice_endpoint_is_bounded(portal, state, tmp_path):
    """A bad Content-Length is a clean 400, never a traceback; 50 stalled connections hold a
    bounded number of threads, and the endpoint still answers once they are dropped."""
    env = worker_env(portal, state, B24_APPLICATION_TOKEN=portal.oauth["application_token"])
    proc = start_worker(env, "--sleep", "60", "--listen", "127.0.0.1:0", "--log-level", "debug")
    url = wait_for_stderr(proc, "listening for ONOFFLINEEVENT").split()[-1]
    baseline = _threads(proc.pid)
    for bad in (b"abc", b"-5", b"1e3", b"99999999999999999999"):
        assert _raw_post(url, b"Content-Length: " + bad + b"\r\n").startswith(b"HTTP/1.0 400")
    stalled = [socket.create_connection(_address(url)) for _ in range(50)]
    try:
        time.sleep(1.0)
        # 8 handler threads at most, and the answer-deadline keeper (rest/deadline.py), which
        # starts with the first answer the worker reads, maybe after the baseline was taken.
        assert _threads(proc.pid) <= baseline + 8 + 1
    finally:
        for conn in stalled:
            conn.close()
    time.sleep(0.5)
    answer = _raw_post(url, b"Content-Length: 0\r\n")
    _, err = terminate(proc)
    assert answer.startswith(b"HTTP/1.0 403")  # served again (an empty notice has no token)
    assert "Traceback" not in err


def test_stalled_notice_connections_are_dropped_after_the_idle_timeout():
    from b24agent.worker.wakeup import WakeListener

    listener = WakeListener("127.0.0.1", 0, "token", threading.Event(), timeout=0.3)
    listener.start()
    try:
        stalled = [socket.create_connection(_address(listener.url)) for _ in range(8)]
        time.sleep(1.0)  # each stalled one is dropped after 0.3 s of silence, freeing its slot
        assert all(conn.recv(10) == b"" for conn in stalled)
        assert _raw_post(listener.url, b"Content-Length: 0\r\n").startswith(b"HTTP/1.0 403")
    finally:
        listener.close()


def test_a_notice_nested_past_the_recursion_limit_is_refused_and_wakes_nothing():
    """Review 7, M3: a notice whose form key nests 5,000 brackets deep (64 KB is room for
    21,000) made decoding raise RecursionError: the connection was dropped unanswered."""
    from b24agent.worker.wakeup import WakeListener

    wake = threading.Event()
    listener = WakeListener("127.0.0.1", 0, "token", wake)
    listener.start()
    body = b"event=ONOFFLINEEVENT&auth[application_token]=token&data" + b"[a]" * 5000 + b"=1"
    try:
        head = b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        with socket.create_connection(_address(listener.url), timeout=10) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + head)
            answer = conn.recv(200)
    finally:
        listener.close()
    assert answer.startswith(b"HTTP/1.0 403"), answer
    assert not wake.is_set() and listener.rejected == 1


def test_events_holding_what_json_does_not_have_are_not_handed_over(portal, state, tmp_path):
    """Review 7, M3: an event.offline.get answer holding Infinity (or nested past the limit)
    is a malformed answer, exit 6, and no event of it reaches the sink as non-JSON."""
    seed_events(portal, 3)
    row = '{"ID": "1", "EVENT_NAME": "ONCRMLEADUPDATE", "EVENT_DATA": {"FIELDS": {"ID": Infinity}}}'
    body = '{"result": {"process_id": "p1", "events": [' + row + ']}, "time": {}}'
    rule = {"method": "event.offline.get", "status": 200, "body": body}
    portal.admin("faults", {"rules": [{**rule, "content_type": "application/json"}]})
    sink = tmp_path / "inbox.jsonl"

    result = run_worker(worker_env(portal, state), "--once", "--no-adopt", "--sink", str(sink))

    assert result.returncode == 6, result.stderr
    assert error_of(result.stderr)["code"] == "MALFORMED_RESPONSE"
    assert not sink.exists() or "Infinity" not in sink.read_text()
