"""When the id-chained export sends its next batch (issue 19): as soon as its start id is in the
last answer's bytes (before that answer is decoded), not when the caller has finished with
earlier rows, and never more than one answered batch ahead of the caller."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from b24agent.rest.client import Bitrix24Client
from b24agent.rest.export import PAGE, _peek_last_id, shape_of
from b24agent.rest.inflight import Chain, Hooks
from b24agent.rest.transport import Watcher
from client_support import client_for, settings_for
from conftest import Sandbox
from hypothesis import given
from hypothesis import strategies as st


def _requests(portal: Sandbox) -> int:
    return portal.stats()["requests"]


def _wait_for(portal: Sandbox, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (seen := _requests(portal)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return seen


def test_next_batch_leaves_while_the_caller_still_reads_the_first(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 12_500})  # five full batches and an empty one
    client = client_for(portal, tmp_path)
    before = _requests(portal)
    rows = client.iter_all("crm.lead.list", {"select": ["ID"]})
    first = next(rows)  # the caller holds batch 1 and does not read on
    # Batch 2 was answered meanwhile, so batch 3 went out without waiting for the caller ...
    assert _wait_for(portal, before + 3, timeout=10) - before == 3
    # ... and no further: one answered batch waiting, one in flight, one in the caller's hands.
    time.sleep(0.5)
    assert _requests(portal) - before == 3
    rest = [int(row["ID"]) for row in rows]
    assert [int(first["ID"]), *rest] == list(range(1, 12_501))
    assert _requests(portal) - before == 6


class _Timeline(Bitrix24Client):
    """Our client, noting when each batch's request left and when its answer was decoded."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.events: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def _note(self, what: str, number: int) -> None:
        with self._lock:
            self.events.append((what, number))

    def batch(self, commands: Any, *, watcher: Watcher | None = None, **kwargs: Any) -> Any:
        with self._lock:
            number = sum(1 for what, _ in self.events if what == "batch")
            self.events.append(("batch", number))
        outer = self

        class Noting:
            def sent(self) -> None:
                outer._note("sent", number)
                if watcher is not None:
                    watcher.sent()

            def answered(self, body: bytes) -> None:
                if watcher is not None:
                    watcher.answered(body)

        answer = super().batch(commands, watcher=Noting(), **kwargs)
        self._note("decoded", number)
        return answer


def test_next_batch_leaves_before_the_answer_before_it_is_decoded(
    portal: Sandbox, tmp_path: Path
) -> None:
    portal.admin("seed", {"crm.lead": 10_000})  # four full batches and an empty one
    client = _Timeline(settings_for(portal, tmp_path))
    ids = [int(row["ID"]) for row in client.iter_all("crm.lead.list", {"select": ["ID"]})]
    assert ids == list(range(1, 10_001))
    events = client.events
    assert sum(1 for what, _ in events if what == "batch") == 5  # no guess was sent and dropped
    for number in range(4):  # the start id of batch n+1 is in batch n's last page
        assert events.index(("sent", number + 1)) < events.index(("decoded", number))


def _answer(pages: list[list[dict[str, Any]]], *, indent: int | None) -> bytes:
    """A batch answer as a portal sends it: rows, then the other per-command maps."""
    names = [f"p{index}" for index in range(len(pages))]
    body = {
        "result": {
            "result": dict(zip(names, pages, strict=True)),
            "result_error": [],
            "result_total": {name: 0 for name in names},
            "result_next": [],
            "result_time": {name: {"start": 1.0, "duration": 0.01} for name in names},
        },
        "time": {"start": 1.0},
    }
    return json.dumps(body, indent=indent).encode()


_NASTY = st.sampled_from(['"p2":[', '"p2":[{"ID":"9"}]', "\\", '"', "p2", "]}", "\u00e9"])


@given(
    sizes=st.lists(st.integers(0, PAGE), min_size=1, max_size=3),
    texts=st.lists(st.text(max_size=6) | _NASTY, min_size=1, max_size=5),
    indent=st.sampled_from([None, 1]),
)
def test_the_peeked_last_id_is_the_last_pages_or_none(
    sizes: list[int], texts: list[str], indent: int | None
) -> None:
    next_id = iter(range(1, 10_000))
    pages = [
        [{"ID": str(next(next_id)), "TITLE": texts[i % len(texts)]} for i in range(size)]
        for size in sizes
    ]
    body = _answer(pages, indent=indent)
    shape = shape_of("crm.lead.list")
    assert shape is not None
    peeked = _peek_last_id(body, "crm.lead.list", shape, f"p{len(pages) - 1}")
    last_page = pages[-1]
    assert peeked in (None, int(last_page[-1]["ID"]) if len(last_page) == PAGE else None)


def test_a_wrong_early_guess_is_dropped_and_the_right_step_runs() -> None:
    """A step that guesses its successor wrongly: the guessed step's item never comes out."""
    started: list[int] = []
    lock = threading.Lock()

    def step(state: int, hooks: Hooks[int]) -> tuple[str, int | None]:
        with lock:
            started.append(state)
        hooks.sent()
        if state < 100:
            hooks.early(state + 100)  # wrong: the real next state is state + 1
        return f"item {state}", state + 1 if state < 3 else None

    # Room for every item, so each guess is acted on whatever the caller's pace.
    assert list(Chain(0, step, ahead=10)) == ["item 0", "item 1", "item 2", "item 3"]
    # Each wrong guess ran (it is a read) but started no guesses of its own.
    assert sorted(started) == [0, 1, 2, 3, 100, 101, 102, 103]
