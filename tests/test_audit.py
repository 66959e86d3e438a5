"""Audit log library: hash chain, tampering named by line, rotation, masking, many writers."""

from __future__ import annotations

import itertools
import json
import multiprocessing
from pathlib import Path

import pytest
from b24agent.fingerprint import canonical_json
from b24agent.guard.audit import AuditEvent, AuditLog, param_keys
from b24agent.guard.auditchain import GENESIS_HASH, chain_files, head_path, seal, verify
from b24agent.redact import Redactor
from b24agent.state import JsonlWriter

SECRET = "sekret-webhook-code-1234567890"
TOKEN = "tok-access-abcdefghijklmnop"


def _log(path: Path, **kwargs) -> AuditLog:
    return AuditLog(path, redactor=Redactor([SECRET, TOKEN]), **kwargs)


def _event(n: int, **overrides) -> AuditEvent:
    fields = {
        "request_id": f"req-{n}",
        "portal": "127.0.0.1_8080",
        "method": "crm.lead.add",
        "risk": "write",
        "outcome": "ok",
        "duration_ms": 12.5,
        "params": {"fields": {"TITLE": f"Lead {n}", "PHONE": [{"VALUE": "+1 555"}]}},
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def _write(path: Path, count: int, **log_kwargs) -> list[dict]:
    log = _log(path, **log_kwargs)
    return [log.write(_event(n)) for n in range(count)]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_lines_are_chained_and_verify(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    written = _write(log, 5)
    assert written[0]["prev"] == GENESIS_HASH
    for before, after in itertools.pairwise(written):
        assert after["prev"] == before["hash"]
    report = verify(log)
    assert report.ok and report.lines == 5 and report.anchored
    first = json.loads(_lines(log)[0])
    assert first["outcome"] == "ok" and first["request_id"] == "req-0"
    assert first["param_keys"] == ["fields.PHONE", "fields.TITLE"]
    assert len(first["params_digest"]) == 64 and "params" not in first


@pytest.mark.parametrize("index", [0, 3, 6])
def test_edited_line_is_named(tmp_path: Path, index: int) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 7)
    lines = _lines(log)
    lines[index] = lines[index].replace('"crm.lead.add"', '"crm.lead.delete"')
    log.write_text("".join(lines), encoding="utf-8")
    report = verify(log)
    assert not report.ok
    assert report.broken.line == index + 1 and "edited" in report.broken.reason


def test_edited_line_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    from b24agent.guard.auditchain import seal

    log = tmp_path / "audit.jsonl"
    _write(log, 5)
    lines = _lines(log)
    forged = json.loads(lines[2])
    forged["method"] = "crm.lead.delete"
    lines[2] = json.dumps(seal(forged, forged["prev"])) + "\n"
    log.write_text("".join(lines), encoding="utf-8")
    report = verify(log)
    assert report.broken.line == 4 and "does not follow" in report.broken.reason


@pytest.mark.parametrize("index", [0, 2, 5])
def test_deleted_line_is_named(tmp_path: Path, index: int) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 7)
    lines = _lines(log)
    del lines[index]
    log.write_text("".join(lines), encoding="utf-8")
    report = verify(log)
    assert not report.ok and report.broken.line == index + 1


def test_reordered_lines_are_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 6)
    lines = _lines(log)
    lines[3], lines[4] = lines[4], lines[3]
    log.write_text("".join(lines), encoding="utf-8")
    report = verify(log)
    assert report.broken.line == 4 and "reordered" in report.broken.reason


def test_deleting_the_last_lines_is_caught_by_the_head(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 4)
    log.write_text("".join(_lines(log)[:-1]), encoding="utf-8")
    report = verify(log)
    assert not report.ok and report.broken.line == 0 and "removed" in report.broken.reason
    # And the next append does not paper over it: it chains from the anchored hash.
    _log(log).write(_event(99))
    assert not verify(log).ok


def _crash_after_append(log: Path, n: int) -> dict:
    """What a writer killed between appending its line and moving the head leaves behind."""
    line = seal(_log(log).entry(_event(n)), _last_hash_on_disk(log))
    with JsonlWriter(log) as writer:
        writer.append_text(canonical_json(line))
    return line


def _last_hash_on_disk(log: Path) -> str:
    return json.loads(_lines(log)[-1])["hash"]


def test_a_writer_killed_before_moving_the_head_is_no_alarm(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 3)
    orphan = _crash_after_append(log, 3)
    report = verify(log)
    assert report.ok and report.lines == 4 and report.unanchored == 1, report.broken
    nxt = _log(log).write(_event(4))  # the next writer chains after the orphan, moves the head
    assert nxt["prev"] == orphan["hash"]
    report = verify(log)
    assert report.ok and report.lines == 5 and report.unanchored == 0 and report.anchored


def test_a_head_two_lines_behind_is_still_caught(tmp_path: Path) -> None:
    """Only the one line a killed writer can leave is accepted past the head."""
    log = tmp_path / "audit.jsonl"
    _write(log, 2)
    _crash_after_append(log, 2)
    _crash_after_append(log, 3)
    assert not verify(log).ok


@pytest.mark.parametrize("rotate", [False, True])
def test_a_torn_last_line_is_no_alarm_and_never_enters_the_chain(
    tmp_path: Path, rotate: bool
) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 3)
    with log.open("ab") as handle:
        handle.write(b'{"api":"v2","duration_ms":1.0,"err')  # killed mid-append
    assert verify(log).ok and verify(log).lines == 3
    # The next writer cuts the torn tail before it rotates, so no half line ends up inside.
    _log(log, max_bytes=log.stat().st_size if rotate else 10**9).write(_event(9))
    report = verify(log)
    assert report.ok and report.lines == 4 and report.anchored
    assert len(chain_files(log)) == (2 if rotate else 1)


def test_truncated_or_garbled_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 3)
    lines = _lines(log)
    lines[1] = lines[1][:40] + "\n"
    log.write_text("".join(lines), encoding="utf-8")
    report = verify(log)
    assert report.broken.line == 2 and "not valid JSON" in report.broken.reason


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    written = _write(log, 30, max_bytes=2000)
    files = chain_files(log)
    assert len(files) >= 3 and files[-1] == log
    assert all(path.stat().st_size <= 2000 for path in files)
    for older, newer in itertools.pairwise(files):
        last = json.loads(_lines(older)[-1])
        assert json.loads(_lines(newer)[0])["prev"] == last["hash"]
    report = verify(log)
    assert report.ok and report.lines == 30 and len(report.files) == len(files)
    assert json.loads(_lines(log)[-1])["hash"] == written[-1]["hash"]


def test_tampering_in_a_rotated_file_names_that_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 30, max_bytes=2000)
    rotated = chain_files(log)[1]
    lines = _lines(rotated)
    lines[1] = lines[1].replace('"ok"', '"error"')
    rotated.write_text("".join(lines), encoding="utf-8")
    report = verify(log)
    assert report.broken.file == str(rotated) and report.broken.line == 2


def test_removed_rotated_file_is_detected(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 30, max_bytes=2000)
    chain_files(log)[1].unlink()
    assert not verify(log).ok


def test_corrupt_head_is_reported(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 2)
    head_path(log).write_text("{not json", encoding="utf-8")
    report = verify(log)
    assert not report.ok and "head" in report.broken.reason


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    full = _log(log, params_mode="full")
    params = {
        "fields": {"TITLE": f"hook {SECRET}", "COMMENTS": "x"},
        "auth": TOKEN,
        "password": "hunter2-not-configured",
    }
    line = full.write(_event(1, params=params, error=f"failed with {TOKEN}"))
    _log(log).write(_event(2, params=params))
    text = log.read_text(encoding="utf-8")
    for secret in (SECRET, TOKEN, "hunter2-not-configured"):
        assert secret not in text
    assert line["params"]["fields"]["COMMENTS"] == "x"  # full mode keeps ordinary values
    digest_line = json.loads(_lines(log)[1])
    assert "params" not in digest_line and "hook" not in json.dumps(digest_line)
    assert verify(log).ok


def test_param_keys_lists_paths_not_values() -> None:
    keys = param_keys({"id": 5, "fields": {"TITLE": "t", "UF": {"A": 1}}, "select": ["ID"]})
    assert keys == ["fields.TITLE", "fields.UF.A", "id", "select"]
    assert param_keys(None) == [] and param_keys({}) == []


def _writer(path: str, worker: int, count: int) -> None:
    log = _log(Path(path))
    for n in range(count):
        log.write(_event(worker * 1000 + n))


def test_concurrent_writers_form_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(log), w, 25)) for w in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    report = verify(log)
    assert report.ok and report.lines == 150
    ids = {json.loads(line)["request_id"] for line in _lines(log)}
    assert len(ids) == 150


def test_check_raises_with_exit_1_naming_the_line(tmp_path: Path) -> None:
    from b24agent.errors import UsageError
    from b24agent.guard.auditchain import AuditChainError, check

    log = tmp_path / "audit.jsonl"
    with pytest.raises(UsageError):
        check(log)
    _write(log, 3)
    assert check(log).lines == 3
    lines = _lines(log)
    log.write_text(lines[0] + lines[2], encoding="utf-8")
    with pytest.raises(AuditChainError) as err:
        check(log)
    assert err.value.exit_code == 1 and f"{log}:2" in err.value.message


# --- keyed chains (broker mode) --------------------------------------------------------------


def _keyed(tmp_path: Path, count: int) -> tuple[Path, bytes]:
    from b24agent.guard.keyfile import create_key, load_key

    key_file = tmp_path / "audit.key"
    assert create_key(key_file) and not create_key(key_file)  # made once, then kept
    assert key_file.stat().st_mode & 0o777 == 0o600
    log = tmp_path / "audit.jsonl"
    _write(log, count, key=load_key(key_file, setting="B24_AUDIT_KEY_FILE"))
    return log, load_key(key_file, setting="B24_AUDIT_KEY_FILE")


def test_a_keyed_chain_verifies_only_with_its_key(tmp_path: Path) -> None:
    log, key = _keyed(tmp_path, 4)
    report = verify(log, key)
    assert report.ok and report.keyed and report.anchored and report.lines == 4
    assert not verify(log, b"another key").ok
    keyless = verify(log)
    assert not keyless.ok and "keyed" in keyless.broken.reason and not keyless.keyed
    # A line re-hashed with plain SHA-256 (no key) is not accepted in a keyed chain.
    from b24agent.guard.auditchain import seal

    lines = _lines(log)
    forged = json.loads(lines[1])
    forged["method"] = "crm.lead.delete"
    lines[1] = json.dumps(seal(forged, forged["prev"])) + "\n"
    log.write_text("".join(lines))
    assert verify(log, key).broken.line == 2


def test_a_keyed_chain_catches_a_cut_tail_a_rewritten_head_and_a_deleted_one(
    tmp_path: Path,
) -> None:
    log, key = _keyed(tmp_path, 4)
    lines, head = _lines(log), head_path(log)
    log.write_text("".join(lines[:-1]))
    assert "removed" in verify(log, key).broken.reason
    head.write_text(json.dumps({"hash": json.loads(lines[-2])["hash"]}))  # no key for a MAC
    assert "MAC" in verify(log, key).broken.reason
    head.unlink()
    assert "head file is missing" in verify(log, key).broken.reason
    # The next writer does not paper over it: its line follows no line, for good.
    _log(log, key=key).write(_event(9))
    assert verify(log, key).broken.line == len(lines)


def test_the_head_is_rewritten_in_place_and_still_catches_a_cut_tail(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 1)
    inode = head_path(log).stat().st_ino
    written = _write(log, 3)
    assert head_path(log).stat().st_ino == inode  # overwritten, not replaced by a rename
    assert json.loads(head_path(log).read_text()) == {"hash": written[-1]["hash"]}
    log.write_text("".join(_lines(log)[:-1]), encoding="utf-8")
    assert not verify(log).ok
