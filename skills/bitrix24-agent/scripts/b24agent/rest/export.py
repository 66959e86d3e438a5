"""Read every row of a list method, fast, without dropping or repeating one (protocol.md 6).

Fast path (settings/performance/huge-data.md), for methods that filter and sort by a numeric id:
``order {ID: ASC}``, ``filter {">ID": last}``, ``start: -1`` (no counting), and 50 such pages
chained inside one batch, each taking its ``>ID`` from the previous page's 50th row
(``$result[p0][49][ID]``; ``[items]`` / ``[tasks]`` for crm.item.list and tasks.task.list): 2,500
rows per HTTP request, the next batch in flight while the caller handles this one. The caller's
filter is kept (a ``>ID`` of theirs becomes the starting point). A page with fewer than 50 rows
is the end; later pages of that batch referenced a row that does not exist, so their answers are
ignored, never trusted.

Another sort order on such a method is still fetched by id, then ordered here (``_local_order``):
paging by offset in the portal's order silently skipped rows whenever rows before them were
deleted meanwhile (173 of 20,000 with concurrent deletes). Every row that exists throughout the
export comes exactly once; the price is that the rows are held in memory until sorted, and text
is ordered case-insensitively by code point, which can differ from the portal's collation.

A page command that fails inside a batch (a 500 or a 429 on one page) is a failed read: the
export waits as the retry policy says and goes on from the last id it has, instead of giving up
with the rows of every later page lost. A page that keeps failing ends the export with its error.

An unknown method pages by offset with ``start``, up to 50 pages per batch, rows de-duplicated
by id. Offsets shift when rows are added or removed meanwhile; that shows as a changed ``total``,
and the export then stops (EXPORT_INCONSISTENT, retry later) instead of returning a set with
holes. The id-chained path cannot repeat a row since ids only grow.

A portal (or proxy) that does not let an export advance ends it, never loops it: by offset, a
``next`` not past its page's ``start`` (list-methods-pecularities.md: ``next`` is the ``start`` of
the following page), a ``next`` at or past the portal's own ``total`` (``next`` comes only while
more rows exist), a batch of pages with no row not seen before, or a page of whole rows without
an id that all came before (told apart by a digest of their JSON: an id-less row is never "new"
by default, or a portal repeating one page with ``next`` moving on loops for ever, review7b L-b).
Rows narrowed by the caller's ``select`` are the exception: a column of stages or currencies
repeats by nature (review8 M5), so there the portal's own ``total`` is the bound (each page
starts past the one before and below it). By id, a batch whose last id did not grow, or a page
whose ids do not rise (the pages are asked for ``ID ASC``), ends the export.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol

from ..encoding import STRICT_JSON
from ..errors import ApiError, B24Error, TransientError, UsageError, server_fault
from .batching import MAX_COMMANDS
from .inflight import Chain, Hooks
from .results import BatchResult, CallResult
from .transport import Watcher

__all__ = ["ListShape", "iter_all", "rows_of", "shape_of"]

PAGE = 50
#: ``again(error, attempt)``: whether a failed page command may be sent again (after waiting).
Again = Callable[[BaseException, int], bool]
_NUMBER = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")


class _Client(Protocol):
    def call(self, method: str, params: Mapping[str, Any] | None = None) -> CallResult: ...

    def batch(
        self,
        commands: Mapping[str, tuple[str, Mapping[str, Any]]],
        *,
        watcher: Watcher | None = None,
    ) -> BatchResult: ...


@dataclass(frozen=True)
class ListShape:
    """How one list method pages by id: where rows sit, what the id is called."""

    rows_key: str | None  # None: the result is the row list; else result[rows_key]
    id_field: str  # the id's name in rows, select, order and filter
    filter_key: str  # ">ID" or ">id"
    sort_param: bool = False  # user.get: ``sort``/``order`` strings instead of an order map

    def reference(self, page: str) -> str:
        rows = f"[{self.rows_key}]" if self.rows_key else ""
        return f"$result[{page}]{rows}[{PAGE - 1}][{self.id_field}]"


_SHAPES: tuple[tuple[re.Pattern[str], ListShape], ...] = (
    (
        re.compile(r"^crm\.(lead|deal|contact|company|quote|activity|requisite)\.list$"),
        ListShape(None, "ID", ">ID"),
    ),
    (re.compile(r"^crm\.item\.list$"), ListShape("items", "id", ">id")),
    (re.compile(r"^tasks\.task\.list$"), ListShape("tasks", "id", ">ID")),
    (re.compile(r"^user\.get$"), ListShape(None, "ID", ">ID", sort_param=True)),
)


def shape_of(method: str) -> ListShape | None:
    """The id-paging shape of ``method``, or None when only offset paging is safe."""
    name = method.lower()
    return next((shape for pattern, shape in _SHAPES if pattern.match(name)), None)


def _key(params: Mapping[str, Any], name: str) -> str:
    """The caller's spelling of parameter ``name`` (Bitrix24 reads names case-insensitively)."""
    return next((k for k in params if str(k).lower() == name), name)


def _row_id(row: Any) -> int | None:
    if not isinstance(row, Mapping):
        return None
    value = row.get("ID", row.get("id"))
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def rows_of(method: str, result: Any, shape: ListShape | None) -> list[Any]:
    """The row list inside a list method's ``result``, accepting PHP's list/map forms."""
    value = result
    if shape is not None and shape.rows_key:
        value = result.get(shape.rows_key) if isinstance(result, Mapping) else None
    elif isinstance(result, Mapping) and result:
        keys = list(result)
        lists = [v for v in result.values() if isinstance(v, list)]
        if keys == [str(i) for i in range(len(keys))]:
            value = list(result.values())
        elif len(lists) == 1 and len(keys) <= 2:
            value = lists[0]  # {"items": [...]}-style results of methods we do not know
    if value == [] or value == {}:
        return []
    if not isinstance(value, list):
        raise UsageError(
            f"{method} does not return a list of rows, so it cannot be exported page by page",
            code="NOT_A_LIST_METHOD",
            hint="call it once instead of exporting it",
        )
    return value


@dataclass(frozen=True)
class _IdPlan:
    """How to export one call by id: the page params, the id to start after, and the caller's
    own order when it is not by id ascending (applied here once every row is in)."""

    params: dict[str, Any]
    start: int
    order: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    added: list[str] = field(default_factory=list)  # selected only to sort by; dropped after


def _direction(value: Any) -> bool | None:
    """True for DESC, False for ASC, None for anything else."""
    text = str(value or "ASC").strip().upper()
    return {"ASC": False, "DESC": True}.get(text)


def _field(row: Any, name: str) -> Any:
    """``row[name]``, names compared case-insensitively (Bitrix24 reads them that way)."""
    if not isinstance(row, Mapping):
        return None
    if name in row:
        return row[name]
    lowered = name.lower()
    return next((v for k, v in row.items() if str(k).lower() == lowered), None)


def _sort_key(value: Any) -> tuple[int, float, str]:
    """Empty values first (as MySQL sorts NULL), then numbers (also numeric strings: v2 sends
    every number as text), then text case-insensitively; anything else by its JSON."""
    if value is None or value == "":
        return (0, 0.0, "")
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.match(value)):
        return (1, float(value), "")
    if isinstance(value, str):
        return (2, 0.0, value.casefold())
    return (3, 0.0, json.dumps(value, sort_keys=True, default=str))


def _local_order(rows: list[Any], order: list[tuple[str, bool]], added: list[str]) -> list[Any]:
    """``rows`` (in id order) in the caller's order; equal keys stay in id order."""
    for name, descending in reversed(order):
        rows.sort(key=lambda row, name=name: _sort_key(_field(row, name)), reverse=descending)
    if not added:
        return rows
    drop = {name.lower() for name in added}
    return [
        {k: v for k, v in row.items() if str(k).lower() not in drop}
        if isinstance(row, Mapping)
        else row
        for row in rows
    ]


def _never(error: BaseException, attempt: int) -> bool:
    return False


class _Export:
    """One export run: yields rows, counts them, stops at ``limit``."""

    def __init__(
        self,
        client: _Client,
        method: str,
        params: Mapping[str, Any],
        limit: int | None,
        progress: Callable[[int], None] | None,
        again: Again = _never,
    ) -> None:
        self.client = client
        self.method = method
        self.params = dict(params)
        self.limit = limit
        self.progress = progress
        self.again = again
        self.count = 0

    def pages_wanted(self) -> int:
        """Pages to ask for in the next batch: 50, or fewer when ``limit`` is near."""
        return self._pages_for(None if self.limit is None else self.limit - self.count)

    @staticmethod
    def _pages_for(room: int | None) -> int:
        """Pages for ``room`` more rows (None: no limit)."""
        if room is None:
            return MAX_COMMANDS
        return max(1, min(MAX_COMMANDS, -(-room // PAGE)))

    def take(self, rows: list[Any]) -> Iterator[Any]:
        if self.limit is not None:
            rows = rows[: max(0, self.limit - self.count)]
        self.count += len(rows)
        return iter(rows)

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.count)

    def done(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    # -- fast path ------------------------------------------------------------------------

    def _order(self, shape: ListShape, params: dict[str, Any]) -> list[tuple[str, bool]] | None:
        """The caller's order as (field, descending) pairs, empty when it is by id ascending
        (or absent), None when it cannot be read; ``params`` is set to page by id."""
        if shape.sort_param:
            sort_name, order_name = _key(params, "sort"), _key(params, "order")
            descending = _direction(params.get(order_name))
            if descending is None:
                return None
            wanted = [(str(params.get(sort_name) or "ID"), descending)]
            params[sort_name], params[order_name] = "ID", "ASC"
        else:
            order_name = _key(params, "order")
            order = params.get(order_name) or {}
            if not isinstance(order, Mapping):
                return None
            wanted = []
            for name, value in order.items():
                descending = _direction(value)
                if descending is None:
                    return None
                wanted.append((str(name), descending))
            params[order_name] = {shape.id_field: "ASC"}
        if wanted == [] or [(n.lower(), d) for n, d in wanted] == [(shape.id_field.lower(), False)]:
            return []
        return wanted

    def id_plan(self, shape: ListShape) -> _IdPlan | None:
        """How to page this call by id, or None if it does not fit (then: by offset)."""
        params = dict(self.params)
        order = self._order(shape, params)
        if order is None:
            return None
        filter_name = _key(params, "filter")
        user_filter = params.get(filter_name) or {}
        if not isinstance(user_filter, Mapping):
            return None
        user_filter = dict(user_filter)
        start = 0
        for key in [k for k in user_filter if str(k).lower() == shape.filter_key.lower()]:
            try:
                start = max(start, int(user_filter.pop(key)))
            except (TypeError, ValueError):
                return None
        params[filter_name] = user_filter
        select_name = _key(params, "select")
        select = params.get(select_name)
        added: list[str] = []
        if isinstance(select, list) and select:
            chosen = {str(s).lower() for s in select}
            if "*" not in chosen:
                ids = [] if shape.id_field.lower() in chosen else [shape.id_field]
                added = list(
                    dict.fromkeys(
                        name
                        for name, _ in order
                        if name.lower() not in chosen and name.lower() != shape.id_field.lower()
                    )
                )
                params[select_name] = [*select, *ids, *added]
        params[_key(params, "start")] = -1
        return _IdPlan(params, start, order, added)

    def _id_batch(
        self,
        shape: ListShape,
        base: dict[str, Any],
        last: int,
        names: list[str],
        watcher: Watcher | None = None,
    ) -> BatchResult:
        """Send one batch of chained pages ``names`` starting after id ``last``."""
        filter_name = _key(base, "filter")
        commands: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for index, name in enumerate(names):
            bound: Any = last if index == 0 else shape.reference(names[index - 1])
            page_filter = {**base[filter_name], shape.filter_key: bound}
            commands[name] = (self.method, {**base, filter_name: page_filter})
        return self.client.batch(commands, watcher=watcher)

    def by_id(self, shape: ListShape, base: dict[str, Any], last: int) -> Iterator[Any]:
        """Id-chained batches, each sent the moment its start id is known: batch k+1 needs only
        the last id of batch k's last page, which is read from the answer's bytes as soon as
        they are in (``_peek_last_id``), before the answer is decoded and checked. Decoding,
        checking and the caller's work (printing, masking) then overlap the next request
        instead of adding up. The early batch is a guess checked against the decoded answer:
        if the answer ends the export, or its last id or row count differs, the early batch's
        answer is dropped and the right batch sent (``Chain``). At most one answered batch
        waits for the caller.

        A failed page is sent again from the last id received (``again`` decides whether and
        when); the rows before it are good and are kept."""

        def step(cursor: _Cursor, hooks: Hooks[_Cursor]) -> tuple[_Scanned, _Cursor | None]:
            pages = self._pages_for(None if self.limit is None else self.limit - cursor.fetched)
            names = [f"p{index}" for index in range(pages)]
            guess = _Guess(self.method, shape, names[-1], cursor, pages, self.limit, hooks)
            answer = self._id_batch(shape, base, cursor.last, names, guess)
            scanned = _scan(self.method, shape, names, answer, cursor.last)
            fetched = cursor.fetched + scanned.rows
            enough = self.limit is not None and fetched >= self.limit
            failures = 0 if scanned.last > cursor.last else cursor.failures
            if scanned.failure is not None and enough:
                scanned.failure = None  # the rows wanted are in; the failed page is not needed
            elif scanned.failure is not None:
                failures += 1
                if self.again(scanned.failure, failures):
                    scanned.failure = None  # resume after the last id received
            more = scanned.failure is None and not scanned.finished and not enough
            return scanned, _Cursor(scanned.last, fetched, failures) if more else None

        for scanned in Chain(_Cursor(last, 0, 0), step):
            for page in scanned.pages:
                yield from self.take(page)
            self.report()
            if scanned.failure is not None:
                raise scanned.failure

    # -- offset fallback --------------------------------------------------------------------

    def by_offset(self) -> Iterator[Any]:
        seen: set[int] = set()
        digests: set[bytes] = set()  # of the rows without an id
        # Rows the caller narrowed with ``select`` repeat by nature (a stage, a currency: review8
        # M5), so their content tells nothing; the portal's own ``total`` bounds such an export
        # (``_advance``: every page starts past the one before and below ``total``).
        repeats_are_data = False  # set once the first page is in

        def unseen(rows: list[Any]) -> list[Any]:
            """``rows`` less those whose id came before; id-less rows all stay, but a page of
            only id-less whole rows that all came before is the portal repeating itself."""
            fresh, new = [], False
            for row in rows:
                row_id = _row_id(row)
                if row_id is None:
                    fresh.append(row)
                    digest = _digest(row)
                    new = new or repeats_are_data or digest not in digests
                    digests.add(digest)
                elif row_id not in seen:
                    fresh.append(row)
                    seen.add(row_id)
                    new = True
            if fresh and not new:
                raise _stuck(self.method, "a page repeated rows without an id received before")
            return fresh

        shape = shape_of(self.method)
        start_name = _key(self.params, "start")
        first = self.client.call(self.method, {**self.params, start_name: 0})
        repeats_are_data = first.total is not None and _narrowed(self.params)
        yield from self.take(unseen(rows_of(self.method, first.result, shape)))
        self.report()
        total, attempt = first.total, 0
        start = _advance(self.method, 0, first.next, total)
        while start is not None and not self.done():
            starts = [start + PAGE * k for k in range(self.pages_wanted())]
            starts = [s for s in starts if total is None or s < total] or [start]
            answer = self.client.batch(
                {f"s{s}": (self.method, {**self.params, start_name: s}) for s in starts}
            )
            start, failed, fresh = None, None, 0
            for s in starts:
                name = f"s{s}"
                if name in answer.errors:
                    failed, start = answer.errors[name], s
                    break
                if total is not None and answer.totals.get(name, total) != total:
                    raise _shifted(self.method)
                attempt = 0
                rows = unseen(rows_of(self.method, answer.results[name], shape))
                fresh += len(rows)
                yield from self.take(rows)
                start = _advance(self.method, s, answer.nexts.get(name), total)
                if start is None or self.done():
                    break
            self.report()
            if failed is None and start is not None and not fresh:
                raise _stuck(self.method, "a batch of pages brought no row not seen before")
            if failed is not None:
                attempt += 1
                if not self.again(failed, attempt):
                    raise failed


@dataclass(frozen=True)
class _Cursor:
    """Where an id-chained export stands: the id to page after, the rows received so far
    and the failed batches in a row without progress."""

    last: int
    fetched: int
    failures: int


class _Guess:
    """Watches one id-chained batch; once its bytes are in, tells the chain where the next
    batch would start if every page came full (see ``_Export.by_id``)."""

    def __init__(
        self,
        method: str,
        shape: ListShape,
        last_page: str,
        cursor: _Cursor,
        pages: int,
        limit: int | None,
        hooks: Hooks[_Cursor],
    ) -> None:
        self.method, self.shape, self.last_page = method, shape, last_page
        self.fetched = cursor.fetched + pages * PAGE
        self.wanted = limit is None or self.fetched < limit
        # Full pages in a chain hold ``pages * PAGE`` distinct ids, each above the one before:
        # a smaller last id means the chain broke (an end, a failed page) and is no guess.
        self.least = cursor.last + pages * PAGE
        self.hooks = hooks

    def sent(self) -> None:
        self.hooks.sent()

    def answered(self, body: bytes) -> None:
        if not self.wanted:
            return
        last = _peek_last_id(body, self.method, self.shape, self.last_page)
        if last is not None and last >= self.least:
            self.hooks.early(_Cursor(last, self.fetched, 0))


#: Places ``_peek_last_id`` tries: the page, and the other per-command maps that name it too.
_PEEK_TRIES = 4


def _peek_last_id(body: bytes, method: str, shape: ListShape, name: str) -> int | None:
    """The id of the last row of page ``name`` when that page is full, read from a batch
    answer's raw bytes without decoding the rest (a page is 1/50 of the answer). Only a
    guess: the key is searched from the end (``result_time`` also names each page; a row's
    text cannot hold it unescaped), and whatever is found is checked against the decoded
    answer before it is trusted."""
    key = f'"{name}":'.encode()
    end = len(body)
    for _ in range(_PEEK_TRIES):
        at = body.rfind(key, 0, end)
        if at < 0:
            return None
        end = at
        try:
            text = body[at + len(key) :].decode().lstrip()
            value, _ = STRICT_JSON.raw_decode(text)
            rows = rows_of(method, value, shape)
        except (ValueError, RecursionError, UsageError):
            continue
        return _row_id(rows[-1]) if len(rows) == PAGE else None
    return None


@dataclass
class _Scanned:
    """One id-chained batch, read: its new rows per page, the last id, how it ended."""

    pages: list[list[Any]]
    last: int
    finished: bool
    failure: B24Error | None

    @property
    def rows(self) -> int:
        return sum(len(page) for page in self.pages)


def _scan(
    method: str, shape: ListShape, names: list[str], answer: BatchResult, last: int
) -> _Scanned:
    """Read the pages of one batch in order, up to the first error or short page (the end;
    later pages referenced a row that does not exist, so they are ignored, never trusted)."""
    previous, pages = last, []
    for name in names:
        if name in answer.errors:
            return _Scanned(pages, last, False, answer.errors[name])
        rows = rows_of(method, answer.results[name], shape)
        ids = [_row_id(row) for row in rows]
        if None in ids:
            return _Scanned(pages, last, False, _inconsistent(method, "rows without a numeric id"))
        if any(a >= b for a, b in pairwise(i for i in ids if i is not None)):
            return _Scanned(pages, last, False, _inconsistent(method, "rows out of id order"))
        pages.append([r for r, i in zip(rows, ids, strict=True) if i is not None and i > last])
        last = max([last, *(i for i in ids if i is not None)])
        if len(rows) < PAGE:
            return _Scanned(pages, last, True, None)
    if last == previous:
        return _Scanned(pages, last, False, _inconsistent(method, "the id filter did not advance"))
    return _Scanned(pages, last, False, None)


def _inconsistent(method: str, what: str) -> ApiError:
    return ApiError(
        f"{method}: export stopped because {what}",
        code="EXPORT_INCONSISTENT",
        hint="pass an explicit order (e.g. by date) to export with offset paging instead",
    )


def _advance(method: str, start: int, following: int | None, total: int | None) -> int | None:
    """The portal's ``next`` after the page at offset ``start``, which must lie past it and,
    since ``next`` comes only while more rows exist, before the portal's own ``total``."""
    if following is not None and following <= start:
        raise _stuck(method, f"the portal's next ({following}) did not move past start {start}")
    if following is not None and total is not None and following >= total:
        raise _stuck(method, f"the portal's next ({following}) is past its own total ({total})")
    return following


def _narrowed(params: Mapping[str, Any]) -> bool:
    """Whether the caller's ``select`` picks some fields only (no ``*``): such rows need not
    hold anything that tells them apart, so repeating ones are data, not a looping portal."""
    select = params.get(_key(params, "select"))
    if not isinstance(select, (list, Mapping)) or not select:
        return False
    names = select.values() if isinstance(select, Mapping) else select
    return "*" not in {str(name).strip() for name in names}


def _digest(row: Any) -> bytes:
    """What tells id-less rows apart: a digest of the row's canonical JSON (16 bytes a row)."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _stuck(method: str, what: str) -> B24Error:
    """An offset export the portal does not let advance: paging on would loop for ever."""
    error = server_fault(
        "EXPORT_INCONSISTENT",
        f"{method}: export stopped because {what}; paging on would never end",
        None,
        write=False,
        hint="the portal (or a proxy on the way) answers pages that do not advance; rows "
        "output before this error are good; repeat the export once the portal pages normally",
    )
    error.retryable = False  # the same pages would come again
    return error


def _shifted(method: str) -> B24Error:
    return TransientError(
        f"{method}: export stopped because rows were added or removed while it paged by "
        "offset, so rows may have been skipped",
        code="EXPORT_INCONSISTENT",
        hint="repeat the export when the data is quieter; methods that page by id are not affected",
    )


def iter_all(
    client: _Client,
    method: str,
    params: Mapping[str, Any] | None = None,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    again: Again = _never,
) -> Iterator[Any]:
    """Every row of ``method`` with ``params``: by id where the method allows it (in the
    caller's order, see the module docstring), else by offset. ``again`` decides whether a
    failed page command is sent again."""
    if limit is not None and limit <= 0:
        return
    shape = shape_of(method)
    export = _Export(client, method, params or {}, limit, progress, again)
    plan = export.id_plan(shape) if shape is not None else None
    if shape is None or plan is None:
        yield from export.by_offset()
    elif not plan.order:
        yield from export.by_id(shape, plan.params, plan.start)
    else:
        every = _Export(client, method, params or {}, None, progress, again)
        rows = list(every.by_id(shape, plan.params, plan.start))
        yield from export.take(_local_order(rows, plan.order, plan.added))
