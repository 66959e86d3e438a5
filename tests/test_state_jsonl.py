"""The one tail reader of append-only JSON Lines files (state.py), used by the audit chain and
the worker: it must find the last whole line whatever a crash left torn after it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from b24agent.state import JsonlWriter, last_line
from hypothesis import given, settings
from hypothesis import strategies as st

LINES = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=30)
TORN = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b""))


@settings(max_examples=200, deadline=None)
@given(lines=LINES, torn=TORN, chunk=st.sampled_from([1, 3, 64, 65536]))
def test_last_line_is_the_last_whole_line_whatever_follows(
    lines: list[bytes], torn: bytes, chunk: int
) -> None:
    import b24agent.state as state

    state._TAIL_CHUNK, saved = chunk, state._TAIL_CHUNK
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "log.jsonl"
            path.write_bytes(b"".join(line + b"\n" for line in lines) + torn)
            assert last_line(path) == (lines[-1] if lines else None)
    finally:
        state._TAIL_CHUNK = saved


def test_a_writer_cuts_the_torn_tail_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\n{"a":')
    with JsonlWriter(path) as log:
        log.append_text('{"a":3}')
    assert path.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'
    assert last_line(path) == b'{"a":3}'
