"""In-place rewrites of small state files (state.overwrite_json): the audit head and the limiter
are rewritten on every call, so they skip the temp file and rename, but only where one write is
all or nothing; anywhere else nothing is written and the caller replaces the file atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from b24agent.state import overwrite_json, read_json, write_json_atomic
from hypothesis import given, settings
from hypothesis import strategies as st

VALUES = st.dictionaries(st.text(max_size=8), st.text(max_size=700), max_size=6)


@settings(max_examples=150, deadline=None)
@given(before=VALUES, after=VALUES, durable=st.booleans())
def test_an_overwrite_leaves_the_new_content_or_the_old_one_untouched(
    before: dict, after: dict, durable: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.json"
        write_json_atomic(path, before)
        old_bytes, inode = path.read_bytes(), path.stat().st_ino
        if overwrite_json(path, after, durable=durable):
            assert read_json(path) == after and path.stat().st_ino == inode
            assert len(path.read_bytes()) <= (512 if durable else 4096)
            if durable:  # one sector, never grown: a power cut cannot leave half of it
                assert len(path.read_bytes()) == len(old_bytes)
        else:
            assert path.read_bytes() == old_bytes


def test_a_missing_file_or_a_grown_durable_record_is_left_to_the_atomic_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "head.json"
    assert not overwrite_json(path, {"hash": "a" * 64}) and not path.exists()
    write_json_atomic(path, {"hash": "a" * 64})
    assert not overwrite_json(path, {"hash": "b" * 64, "mac": "c" * 64})
    assert json.loads(path.read_text()) == {"hash": "a" * 64}
    assert overwrite_json(path, {"hash": "d"})  # shorter: padded with spaces to the old length
    assert path.read_bytes() == b'{"hash":"d"}'.ljust(len('{"hash":"' + "a" * 64 + '"}'))
    assert read_json(path) == {"hash": "d"} and os.stat(path).st_mode & 0o777 == 0o600
