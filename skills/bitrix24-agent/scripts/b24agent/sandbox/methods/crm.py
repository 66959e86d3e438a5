"""CRM methods: ``crm.lead|deal|contact|company.*`` and the universal ``crm.item.*``.

Both families work on the same records (crm_model keeps one table per entity and renders it two
ways), so a lead added with ``crm.item.add`` is read back by ``crm.lead.get`` and either way of
changing it raises the same ONCRMLEAD* event. Shapes and errors follow the docs pages:
crm/leads/crm-lead-*.md (and its deal, contact, company twins), crm/universal/crm-item-*.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import crm_fields as fields_
from .. import crm_model as model
from ..context import CallContext
from ..envelope import Page
from ..errors import PortalError, argument_error, not_found
from ..filters import (
    PAGE_SIZE,
    FilterError,
    compile_filter,
    compile_order,
    make_page,
    page_start,
    select_list,
)
from ..registry import method
from ..store import Query

Apply = Callable[[dict[str, Any]], None]


def _param(params: dict[str, Any], name: str) -> Any:
    """A top-level parameter, whatever its case (``id``, ``ID``, ``Id``)."""
    for key, value in params.items():
        if key.lower() == name.lower():
            return value
    return None


def _positive_id(raw: Any) -> int | None:
    try:
        value = int(str(raw).strip())
    except ValueError:
        return None
    return value if value > 0 else None


# --- shared operations: one transaction each, events raised inside it -------------------------


def _next_multi_id(ctx: CallContext) -> Callable[[], int]:
    return lambda: ctx.portal.store.next_value("crm_multifield")


def _create(ctx: CallContext, entity: fields_.Entity, apply: Apply) -> dict[str, Any]:
    store = ctx.portal.store
    with store.transaction():
        record: dict[str, Any] = {}
        apply(record)
        model.finish_record(entity, record, None, ctx.auth.user_id, int(time.time()))
        record_id = store.insert(entity.table, record)
        if "TITLE" in entity.by_name and not record.get("TITLE"):
            # The docs' default title is "{entity name} #{id}", known only after the insert.
            record["TITLE"] = f"{entity.label} #{record_id}"
            store.put(entity.table, record_id, record)
        record["ID"] = record_id
        ctx.portal.events.emit(ctx, entity.event("ADD"), {"FIELDS": {"ID": record_id}})
    return record


def _change(
    ctx: CallContext, entity: fields_.Entity, record_id: int, apply: Apply
) -> dict[str, Any] | None:
    store = ctx.portal.store
    with store.transaction():
        before = store.get(entity.table, record_id)
        if before is None:
            return None
        record = dict(before)
        apply(record)
        model.finish_record(entity, record, before, ctx.auth.user_id, int(time.time()))
        store.put(entity.table, record_id, record)
        ctx.portal.events.emit(ctx, entity.event("UPDATE"), {"FIELDS": {"ID": record_id}})
    return record


def _remove(ctx: CallContext, entity: fields_.Entity, record_id: int) -> bool:
    store = ctx.portal.store
    with store.transaction():
        if not store.delete(entity.table, record_id):
            return False
        ctx.portal.events.emit(ctx, entity.event("DELETE"), {"FIELDS": {"ID": record_id}})
    return True


def _search(
    ctx: CallContext,
    entity: fields_.Entity,
    where: tuple[str, list[Any]],
    order: list[str],
    start: Any,
) -> tuple[list[dict[str, Any]], int, int, bool]:
    offset, counted = page_start(start)
    query = Query(where[0], where[1], order, offset, PAGE_SIZE, counted)
    rows, total = ctx.portal.store.select(entity.table, query)
    return rows, total, offset, counted


def _star_page(
    ctx: CallContext,
    entity: fields_.Entity,
    where: tuple[str, list[Any]],
    order: list[str],
    start: Any,
) -> Page:
    """A ``.list`` page in the default select, each row rendered once while it is unchanged."""
    store = ctx.portal.store
    offset, counted = page_start(start)
    query = Query(where[0], where[1], order, offset, PAGE_SIZE, counted)
    rows, total = store.select_stored(entity.table, query)
    view = model.list_view(entity)
    items = [store.render(entity.table, row, view) for row in rows]
    return make_page(items, total, offset, counted)


# --- crm.<entity>.* (deprecated but everywhere) ---------------------------------------------


def _old_id(params: dict[str, Any]) -> int:
    record_id = _positive_id(_param(params, "id"))
    if record_id is None:
        raise PortalError("", "ID is not defined or invalid.")
    return record_id


def _old_apply(ctx: CallContext, entity: fields_.Entity, fields: Any) -> Apply:
    def apply(record: dict[str, Any]) -> None:
        try:
            model.apply_fields(entity, record, fields or {}, _next_multi_id(ctx))
        except model.FieldValueError as exc:
            raise PortalError("", str(exc)) from None

    return apply


def _old_filter_error(exc: FilterError) -> PortalError:
    return argument_error(f"Invalid filter value for field {exc.field}", exc.field)


def _register_old(entity: fields_.Entity) -> None:
    prefix = f"crm.{entity.code}"

    @method(f"{prefix}.add", scope="crm")
    def add(ctx: CallContext, params: dict[str, Any]) -> int:
        return _create(ctx, entity, _old_apply(ctx, entity, _param(params, "fields")))["ID"]

    @method(f"{prefix}.get", scope="crm")
    def get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        record = ctx.portal.store.get(entity.table, _old_id(params))
        if record is None:
            raise not_found()
        return model.v2_view(entity, record, None)

    @method(f"{prefix}.update", scope="crm")
    def update(ctx: CallContext, params: dict[str, Any]) -> bool:
        record_id = _old_id(params)
        apply = _old_apply(ctx, entity, _param(params, "fields"))
        if _change(ctx, entity, record_id, apply) is None:
            raise not_found()
        return True

    @method(f"{prefix}.delete", scope="crm")
    def delete(ctx: CallContext, params: dict[str, Any]) -> bool:
        if not _remove(ctx, entity, _old_id(params)):
            raise not_found()
        return True

    @method(f"{prefix}.list", scope="crm")
    def list_(ctx: CallContext, params: dict[str, Any]) -> Page:
        def resolve(name: str) -> Any:
            return model.v2_column(entity, name)

        try:
            where = compile_filter(_param(params, "filter"), resolve)
            order = compile_order(_param(params, "order"), resolve)
        except FilterError as exc:
            raise _old_filter_error(exc) from None
        select = select_list(_param(params, "select"))
        if model.is_star(select):
            return _star_page(ctx, entity, where, order, _param(params, "start"))
        rows, total, offset, counted = _search(ctx, entity, where, order, _param(params, "start"))
        items = [model.v2_view(entity, row, select) for row in rows]
        return make_page(items, total, offset, counted)

    @method(f"{prefix}.fields", scope="crm")
    def fields(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        return fields_.v2_fields_description(entity)


for _entity in fields_.ENTITIES.values():
    _register_old(_entity)


# --- crm.item.* -----------------------------------------------------------------------------


def _item_entity(params: dict[str, Any]) -> fields_.Entity:
    type_id = _positive_id(_param(params, "entityTypeId"))
    entity = fields_.ENTITY_BY_TYPE_ID.get(type_id or 0)
    if entity is None:
        raise PortalError("NOT_FOUND", "Smart process not found")
    return entity


def _item_id(params: dict[str, Any]) -> int:
    record_id = _positive_id(_param(params, "id"))
    if record_id is None:
        raise argument_error("Required parameter id is missing or not a positive integer", "id")
    return record_id


def _original_uf(params: dict[str, Any]) -> bool:
    return str(_param(params, "useOriginalUfNames") or "N").upper() == "Y"


def _item_apply(ctx: CallContext, entity: fields_.Entity, params: dict[str, Any]) -> Apply:
    fields = _param(params, "fields")
    if fields is None:
        raise argument_error("Required parameter fields is missing", "fields")

    def apply(record: dict[str, Any]) -> None:
        try:
            model.apply_fields(
                entity,
                record,
                fields,
                _next_multi_id(ctx),
                camel=True,
                original_uf=_original_uf(params),
            )
        except model.FieldValueError as exc:
            raise PortalError("CRM_FIELD_ERROR_VALUE_NOT_VALID", str(exc)) from None

    return apply


def _item_missing() -> PortalError:
    return PortalError("NOT_FOUND", "Item not found")


def _item(params: dict[str, Any], entity: fields_.Entity, record: dict[str, Any]) -> dict[str, Any]:
    return {"item": model.item_view(entity, record, None, _original_uf(params))}


@method("crm.item.add", scope="crm")
def item_add(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    entity = _item_entity(params)
    return _item(params, entity, _create(ctx, entity, _item_apply(ctx, entity, params)))


@method("crm.item.get", scope="crm")
def item_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    entity = _item_entity(params)
    record = ctx.portal.store.get(entity.table, _item_id(params))
    if record is None:
        raise _item_missing()
    return _item(params, entity, record)


@method("crm.item.update", scope="crm")
def item_update(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    entity = _item_entity(params)
    record_id = _item_id(params)
    record = _change(ctx, entity, record_id, _item_apply(ctx, entity, params))
    if record is None:
        raise _item_missing()
    return _item(params, entity, record)


@method("crm.item.delete", scope="crm")
def item_delete(ctx: CallContext, params: dict[str, Any]) -> list[Any]:
    entity = _item_entity(params)
    if not _remove(ctx, entity, _item_id(params)):
        raise _item_missing()
    return []  # crm-item-delete.md: an empty array on success


@method("crm.item.list", scope="crm")
def item_list(ctx: CallContext, params: dict[str, Any]) -> Page:
    entity = _item_entity(params)
    original = _original_uf(params)

    def resolve(name: str) -> Any:
        return model.item_column(entity, name, original)

    try:
        where = compile_filter(_param(params, "filter"), resolve, strict=True)
        order = compile_order(_param(params, "order"), resolve, strict=True)
    except FilterError as exc:
        raise _item_filter_error(exc) from None
    rows, total, offset, counted = _search(ctx, entity, where, order, _param(params, "start"))
    select = select_list(_param(params, "select")) or None
    items = [model.item_view(entity, row, select, original) for row in rows]
    return make_page({"items": items}, total, offset, counted)


def _item_filter_error(exc: FilterError) -> PortalError:
    """INVALID_ARG_VALUE with the texts crm-item-list.md documents."""
    if exc.reason == "order":
        text = f"Invalid order: field '{exc.field}' is not allowed in order"
    elif exc.reason == "field":
        text = f"Invalid filter: field '{exc.field}' is not allowed in filter"
    else:
        text = f"Invalid filter: field '{exc.field}' has invalid value"
    return PortalError("INVALID_ARG_VALUE", text)


@method("crm.item.fields", scope="crm")
def item_fields(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return fields_.item_fields_description(_item_entity(params))
