"""The audit head moved after the answer (guard/deferred.py): a served call's line is on disk
before its exit code, the head follows under the log's lock, and nothing else changes.

A warm or broker worker runs its call inside ``deferring()``; the plain CLI and the library do
not, and there the head still moves before ``Pipeline.run`` returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from b24agent.guard import deferred
from b24agent.guard.auditchain import read_head, verify
from b24agent.guard.pipeline import Call, CallRequest, Pipeline
from b24agent.settings import Settings
from b24agent.state import file_lock
from client_support import settings_for
from conftest import Sandbox
from filelock import Timeout


def _last_hash(log: Path) -> str:
    return json.loads(log.read_text().splitlines()[-1])["hash"]


def _locked_by_someone(log: Path) -> bool:
    lock = file_lock(log, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def _call(pipeline: Pipeline) -> None:
    pipeline.run(CallRequest("call", (Call("user.current"),)))


def _setup(portal: Sandbox, tmp_path: Path) -> tuple[Settings, Path]:
    settings = settings_for(portal, tmp_path / "state")
    return settings, Path(settings.audit_file)


def _whole_and_anchored(log: Path, lines: int) -> None:
    report = verify(log)
    assert report.ok and report.anchored and report.unanchored == 0 and report.lines == lines


def test_inside_deferring_the_line_is_on_disk_and_the_head_follows_on_leaving(
    portal: Sandbox, tmp_path: Path
) -> None:
    settings, log = _setup(portal, tmp_path)
    with Pipeline(settings) as pipeline:
        _call(pipeline)  # outside deferring (plain CLI, library): the head moves before it returns
        first = _last_hash(log)
        assert read_head(log) == first
        assert not _locked_by_someone(log)
        with deferred.deferring():
            _call(pipeline)
            # The answer may go out now: its line is written, the head one line behind (as a
            # writer killed there leaves it, which verify accepts), the lock still held.
            last = json.loads(log.read_text().splitlines()[-1])
            assert last["prev"] == first == read_head(log)
            assert _locked_by_someone(log)
        assert read_head(log) == _last_hash(log)
        assert not _locked_by_someone(log)
    _whole_and_anchored(log, 2)


def test_a_second_line_in_one_deferring_block_moves_the_first_ones_head_first(
    portal: Sandbox, tmp_path: Path
) -> None:
    """The block still holds the lock for its first line: the second write settles that
    (head, then release) instead of waiting for a lock its own process holds."""
    settings, log = _setup(portal, tmp_path)
    with Pipeline(settings) as pipeline, deferred.deferring():
        _call(pipeline)
        first = _last_hash(log)
        _call(pipeline)
        assert read_head(log) == first  # the first line's head, moved before the second line
    _whole_and_anchored(log, 2)


def test_work_put_off_runs_when_the_block_raises() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError), deferred.deferring():
        deferred.later(lambda: done.append("head"))
        assert done == []
        raise RuntimeError("the call failed after its line was written")
    assert done == ["head"]
    deferred.later(lambda: done.append("now"))  # no block open: at once
    assert done == ["head", "now"]
