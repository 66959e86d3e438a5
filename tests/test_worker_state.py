"""The worker's files on disk: fsynced JSONL with crash tails, and the checkpoint journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from b24agent.state import CorruptStateError, JsonlWriter, read_jsonl
from b24agent.worker.checkpoint import Checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

ROWS = [{"ID": str(i), "MESSAGE_ID": f"m{i}", "EVENT_NAME": "ONCRMLEADUPDATE"} for i in range(1, 6)]


def test_a_torn_last_line_is_skipped_and_cut_before_the_next_append(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')

    assert [r["a"] for r in read_jsonl(path)] == [1, 2]
    with JsonlWriter(path) as writer:
        writer.append({"a": 4})

    assert [r["a"] for r in read_jsonl(path)] == [1, 2, 4]


def test_a_new_file_is_private(tmp_path: Path):
    path = tmp_path / "sub" / "dlq.jsonl"
    with JsonlWriter(path) as writer:
        writer.append({"a": 1})

    assert path.stat().st_mode & 0o777 == 0o600


def test_a_bad_line_before_the_end_is_corruption_not_a_crash_tail(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"a": 3}\n')

    with pytest.raises(CorruptStateError, match="line 2"):
        list(read_jsonl(path))


def test_outcomes_survive_a_crash_through_the_journal(tmp_path: Path):
    path = tmp_path / "checkpoint.json"
    first = Checkpoint(path).open()
    reservation = first.add("p1", ROWS, "queue", rejected=["5"])
    first.record(reservation, "1", "done")
    first.record(reservation, "2", "dead")
    # No close, no snapshot write: as if killed here.

    again = Checkpoint(path).open()
    restored = again.reservations["p1"]
    assert restored.outcomes == {"1": "done", "2": "dead", "5": "rejected"}
    assert [row["ID"] for row in restored.pending()] == ["3", "4"]


def test_settling_forgets_finished_rows_and_quarantines_rejected_ones(tmp_path: Path):
    path = tmp_path / "checkpoint.json"
    checkpoint = Checkpoint(path).open()
    reservation = checkpoint.add("p1", ROWS[:3], "queue", rejected=["3"])
    checkpoint.record(reservation, "1", "done")
    checkpoint.record(reservation, "2", "dead")

    checkpoint.settle(reservation, ["1", "2"], quarantined=["3"], reason="token")

    data = json.loads(path.read_text())
    assert data["reservations"] == []
    assert [(q["process_id"], q["ids"]) for q in data["quarantine"]] == [("p1", ["3"])]
    assert checkpoint.journal_path.read_bytes() == b""
    assert Checkpoint(path).open().known_process_ids() == {"p1"}


def test_journal_outcomes_are_applied_when_a_lost_snapshot_is_adopted_back(tmp_path: Path):
    path = tmp_path / "checkpoint.json"
    checkpoint = Checkpoint(path).open()
    reservation = checkpoint.add("p1", ROWS, "queue")
    checkpoint.record(reservation, "1", "done")
    checkpoint.record(reservation, "2", "done")
    path.unlink()  # the snapshot is gone (e.g. moved aside as corrupt)

    again = Checkpoint(path).open()
    assert again.reservations == {}
    adopted = again.add("p1", ROWS, "adopted")

    assert [row["ID"] for row in adopted.pending()] == ["3", "4", "5"]


def test_rows_are_stored_without_credentials_or_list_columns(tmp_path: Path):
    path = tmp_path / "checkpoint.json"
    row = {**ROWS[0], "auth": {"application_token": "s3cr3t-token"}, "PROCESS_ID": "x", "ERROR": 0}
    Checkpoint(path).open().add("p1", [row], "adopted")

    text = path.read_text()
    assert "s3cr3t-token" not in text and "PROCESS_ID" not in text


@settings(max_examples=60, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=400),
    outcomes=st.lists(st.sampled_from(["done", "dead"]), min_size=1, max_size=5),
)
def test_any_crash_point_in_the_journal_loads_a_prefix_of_the_outcomes(
    tmp_path_factory, cut, outcomes
):
    path = tmp_path_factory.mktemp("cp") / "checkpoint.json"
    checkpoint = Checkpoint(path).open()
    reservation = checkpoint.add("p1", ROWS, "queue")
    for row, outcome in zip(ROWS, outcomes, strict=False):
        checkpoint.record(reservation, row["ID"], outcome)
    checkpoint.close()
    journal = checkpoint.journal_path.read_bytes()
    checkpoint.journal_path.write_bytes(journal[: min(cut, len(journal))])

    loaded = Checkpoint(path).open().reservations["p1"].outcomes

    expected = dict(zip([r["ID"] for r in ROWS], outcomes, strict=False))
    assert loaded == dict(list(expected.items())[: len(loaded)])
