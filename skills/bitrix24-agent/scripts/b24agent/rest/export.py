"""Read every row of a list method, fast, without dropping or repeating one (protocol.md 6).

Fast path (settings/performance/huge-data.md), for methods that filter and sort by a numeric id:
``order {ID: ASC}``, ``filter {">ID": last}``, ``start: -1`` (no counting), and 50 such pages
chained inside one batch, each taking its ``>ID`` from the previous page's 50th row
(``$result[p0][49][ID]``; ``[items]`` / ``[tasks]`` for crm.item.list and tasks.task.list): 2,500
rows per HTTP request, the next batch in flight while the caller handles this one. The caller's
filter is kept (a ``>ID`` of theirs becomes the starting point). A page with fewer than 50 rows
is the end; later pages of that batch referenced a row that does not exist, so their answers are
ignored, never trusted.

Anything else (another sort order, an unknown method) pages by offset with ``start``, up to 50
pages per batch. Offsets shift when rows are added or removed meanwhile, so rows are de-duplicated
by id; the id-chained path cannot repeat a row since ids only grow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ApiError, B24Error, UsageError
from .batching import MAX_COMMANDS
from .inflight import Chain
from .results import BatchResult, CallResult

__all__ = ["ListShape", "iter_all", "rows_of", "shape_of"]

PAGE = 50


class _Client(Protocol):
    def call(self, method: str, params: Mapping[str, Any] | None = None) -> CallResult: ...

    def batch(self, commands: Mapping[str, tuple[str, Mapping[str, Any]]]) -> BatchResult: ...


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
    except (TypeError, ValueError):
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


class _Export:
    """One export run: yields rows, counts them, stops at ``limit``."""

    def __init__(
        self,
        client: _Client,
        method: str,
        params: Mapping[str, Any],
        limit: int | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.client = client
        self.method = method
        self.params = dict(params)
        self.limit = limit
        self.progress = progress
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
        for row in rows:
            if self.limit is not None and self.count >= self.limit:
                return
            self.count += 1
            yield row

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.count)

    def done(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    # -- fast path ------------------------------------------------------------------------

    def id_paging_base(self, shape: ListShape) -> tuple[dict[str, Any], int] | None:
        """Params for id-chained pages plus the starting id, or None if the call does not fit."""
        params = dict(self.params)
        if shape.sort_param:
            sort, order = params.get(_key(params, "sort")), params.get(_key(params, "order"))
            if (sort or "ID").upper() != "ID" or (order or "ASC").upper() != "ASC":
                return None
            params[_key(params, "sort")], params[_key(params, "order")] = "ID", "ASC"
        else:
            order = params.get(_key(params, "order"))
            if order and not (
                isinstance(order, Mapping)
                and len(order) == 1
                and str(next(iter(order))).lower() == shape.id_field.lower()
                and str(next(iter(order.values()))).upper() == "ASC"
            ):
                return None
            params[_key(params, "order")] = {shape.id_field: "ASC"}
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
        if isinstance(select, list) and select:
            wanted = {str(s).lower() for s in select}
            if shape.id_field.lower() not in wanted and "*" not in wanted:
                params[select_name] = [*select, shape.id_field]
        params[_key(params, "start")] = -1
        return params, start

    def _id_batch(
        self, shape: ListShape, base: dict[str, Any], last: int, pages: int
    ) -> tuple[list[str], BatchResult]:
        """Send one batch of ``pages`` chained pages starting after id ``last``."""
        filter_name = _key(base, "filter")
        commands: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for index in range(pages):
            bound: Any = last if index == 0 else shape.reference(f"p{index - 1}")
            page_filter = {**base[filter_name], shape.filter_key: bound}
            commands[f"p{index}"] = (self.method, {**base, filter_name: page_filter})
        return list(commands), self.client.batch(commands)

    def by_id(self, shape: ListShape, base: dict[str, Any], last: int) -> Iterator[Any]:
        """Id-chained batches, each sent the moment the one before it is answered: batch k+1
        needs only batch k's last id, so it leaves while the caller still handles earlier rows
        (printing, masking), and the portal's answer time and the caller's work overlap instead
        of adding up. At most one answered batch waits for the caller (``Chain``)."""
        fetched = 0

        def step(start: int) -> tuple[_Scanned, int | None]:
            nonlocal fetched
            pages = self._pages_for(None if self.limit is None else self.limit - fetched)
            names, answer = self._id_batch(shape, base, start, pages)
            scanned = _scan(self.method, shape, names, answer, start)
            fetched += scanned.rows
            more = scanned.failure is None and not scanned.finished
            more = more and (self.limit is None or fetched < self.limit)
            return scanned, scanned.last if more else None

        for scanned in Chain(last, step):
            for page in scanned.pages:
                yield from self.take(page)
            self.report()
            if scanned.failure is not None:
                raise scanned.failure

    # -- offset fallback --------------------------------------------------------------------

    def by_offset(self) -> Iterator[Any]:
        seen: set[int] = set()

        def unseen(rows: list[Any]) -> list[Any]:
            fresh = []
            for row in rows:
                row_id = _row_id(row)
                if row_id is None or row_id not in seen:
                    fresh.append(row)
                    if row_id is not None:
                        seen.add(row_id)
            return fresh

        shape = shape_of(self.method)
        start_name = _key(self.params, "start")
        first = self.client.call(self.method, {**self.params, start_name: 0})
        yield from self.take(unseen(rows_of(self.method, first.result, shape)))
        self.report()
        start, total = first.next, first.total
        while start is not None and not self.done():
            starts = [start + PAGE * k for k in range(self.pages_wanted())]
            starts = [s for s in starts if total is None or s < total] or [start]
            answer = self.client.batch(
                {f"s{s}": (self.method, {**self.params, start_name: s}) for s in starts}
            )
            start = None
            for s in starts:
                name = f"s{s}"
                if name in answer.errors:
                    raise answer.errors[name]
                yield from self.take(unseen(rows_of(self.method, answer.results[name], shape)))
                start = answer.nexts.get(name)
                if start is None or self.done():
                    break
            self.report()


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


def iter_all(
    client: _Client,
    method: str,
    params: Mapping[str, Any] | None = None,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Any]:
    """Every row of ``method`` with ``params``, in id order where the method allows it."""
    if limit is not None and limit <= 0:
        return
    export = _Export(client, method, params or {}, limit, progress)
    shape = shape_of(method)
    plan = export.id_paging_base(shape) if shape is not None else None
    if shape is None or plan is None:
        yield from export.by_offset()
    else:
        yield from export.by_id(shape, *plan)
