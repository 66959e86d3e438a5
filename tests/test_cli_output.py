"""The CLI's JSON writers: streamed documents must parse back to exactly what was streamed."""

from __future__ import annotations

import io
import json
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from b24agent.cli.output import Printer, Progress, dump_line
from cli_support import Cli
from conftest import Sandbox
from hypothesis import given
from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(value=JSON | st.floats() | st.dictionaries(st.text(max_size=3), st.floats(), max_size=3))
def test_a_line_is_what_json_dumps_writes(value: Any) -> None:
    """dump_line reuses one C encoder: its lines are json.dumps's, byte for byte."""
    assert dump_line(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@given(
    items=st.lists(JSON, max_size=6), compact=st.booleans(), key=st.sampled_from([None, "result"])
)
def test_streamed_array_parses_back(items: list[Any], compact: bool, key: str | None) -> None:
    out = io.StringIO()
    count = Printer(out, compact=compact).array(iter(items), key=key)
    document = json.loads(out.getvalue())
    assert count == len(items)
    assert document == (items if key is None else {"result": items, "total": len(items)})
    assert out.getvalue().endswith("\n")
    assert out.getvalue().count("\n") == 1 or not compact


def test_a_stream_failing_at_once_writes_nothing() -> None:
    def failing() -> Iterator[Any]:
        raise RuntimeError("portal gone")
        yield  # pragma: no cover

    out = io.StringIO()
    with pytest.raises(RuntimeError):
        Printer(out).array(failing(), key="result")
    assert out.getvalue() == ""


def test_mask_applies_to_every_written_piece() -> None:
    out = io.StringIO()
    printer = Printer(out, mask=lambda text: text.replace("s3cret", "***"))
    printer.array(iter([{"t": "a s3cret"}, "s3cret"]))
    printer.line({"k": "s3cret"})
    assert "s3cret" not in out.getvalue() and out.getvalue().count("***") == 3


def test_progress_is_silent_off_a_terminal() -> None:
    err = io.StringIO()
    progress = Progress(err, "exported", "rows")
    progress(2500)
    progress.finish()
    assert not progress.enabled and err.getvalue() == ""


def test_a_keyed_stream_failing_later_still_parses_and_says_it_is_incomplete() -> None:
    def failing() -> Iterator[Any]:
        yield {"ID": "1"}
        raise RuntimeError("portal gone")

    for compact in (True, False):
        out = io.StringIO()
        with pytest.raises(RuntimeError):
            Printer(out, compact=compact).array(failing(), key="result")
        assert json.loads(out.getvalue()) == {
            "result": [{"ID": "1"}],
            "total": 1,
            "incomplete": True,
        }


# --- an export's rows reach stdout as they come, and before its failure (review7 L5) -------------


#: The export's first list request answers; every later one as the rule says.
def _then(rule: dict[str, Any]) -> dict[str, Any]:
    first = {"method": "crm.lead.list", "error": None, "times": 1}
    return {"rules": [first, {"method": "crm.lead.list", **rule}]}


def test_rows_received_before_an_export_fails_are_printed_first(
    portal: Sandbox, tmp_path: Path
) -> None:
    """The first page (50 rows) arrives, the next request is refused. Before, the 50 rows
    waited in the printer for a next row that never came and were dropped with the error:
    stdout empty. Now they are on stdout (jsonl), then the error on stderr."""
    portal.admin("seed", {"crm.lead": 120})
    portal.admin("faults", _then({"error": "ACCESS_DENIED", "status": 403}))
    run = Cli.on_webhook(portal, tmp_path)("crm.lead.list", "--all", "--output", "jsonl")
    assert run.code != 0 and run.error()["code"] == "ACCESS_DENIED", run.err
    ids = [json.loads(line)["ID"] for line in run.out.splitlines()]
    assert ids == [str(n) for n in range(1, 51)]
    (tmp_path / "json").mkdir()
    json_run = Cli.on_webhook(portal, tmp_path / "json")
    portal.admin("faults", _then({"error": "ACCESS_DENIED", "status": 403}))
    document = json.loads(json_run("crm.lead.list", "--all", "--output", "json").out)
    assert len(document["result"]) == 50 and document["incomplete"] is True


def test_a_failed_bare_array_export_does_not_parse_as_whole(
    portal: Sandbox, tmp_path: Path
) -> None:
    """``--output result`` has no room for an ``incomplete`` marker. Before, a failed export
    closed its array anyway: ``> leads.json; jq length`` took 50 of 120 leads for all of
    them. Now the array stays open and fails to parse; the 50 rows are there, the error line
    and the exit code as before (review7b L-e)."""
    portal.admin("seed", {"crm.lead": 120})
    portal.admin("faults", _then({"error": "ACCESS_DENIED", "status": 403}))
    run = Cli.on_webhook(portal, tmp_path)("crm.lead.list", "--all", "--output", "result")
    assert run.code == 1 and run.error()["code"] == "ACCESS_DENIED", run.err
    with pytest.raises(json.JSONDecodeError):
        json.loads(run.out)
    assert json.loads(run.out.rstrip() + "]")[-1]["ID"] == "50"


def test_rows_of_a_page_reach_the_pipe_while_the_next_page_is_slow() -> None:
    """50 rows come at once, then the next page takes its time. Before, they reached the pipe
    only when the next row came (1 of 50 after 8 s in the review), and a SIGTERM meanwhile
    dropped them; now a reader has all 50 within 10 s of the first (they wait 0.1 s)."""
    next_page = threading.Event()

    def page_then_wait() -> Iterator[Any]:
        yield from ({"ID": str(n)} for n in range(1, 51))
        next_page.wait(60)

    read_end, write_end = os.pipe()
    with open(read_end) as pipe, open(write_end, "w") as stream:  # the writer closes first
        printer = threading.Thread(target=Printer(stream).lines, args=(page_then_wait(),))
        printer.start()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in pipe], daemon=True).start()
        read = []
        try:
            read.append(lines.get(timeout=60))
            while len(read) < 50:
                read.append(lines.get(timeout=10))
        except queue.Empty:
            pass
        finally:
            next_page.set()
            printer.join()
    assert len(read) == 50, f"{len(read)} of the first page's 50 rows in the pipe"
