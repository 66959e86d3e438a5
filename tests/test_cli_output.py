"""The CLI's JSON writers: streamed documents must parse back to exactly what was streamed."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from b24agent.cli.output import Printer, Progress, dump_line
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
