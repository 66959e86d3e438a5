"""Drive: ``disk.storage.getlist``, ``disk.storage.uploadfile``, ``disk.folder.uploadfile``,
``disk.file.get`` (api-reference/disk/storage/*.md, folder/*.md, file/*.md) and attaching a
Drive file to a task with ``tasks.task.files.attach`` (api-reference/tasks/tasks-task-files-
attach.md), which lives here because the attachment is Drive's record, not the task's.

Every user has a storage and the company has a shared one; they appear on first use, each with
a root folder. Files and folders share one id space, as Drive objects do. Uploads take the
docs' ``fileContent: [name, base64]``; the sandbox keeps name and size, not the bytes, and does
not serve upload-by-URL. An attachment is written into the task's ``UF_TASK_WEBDAV_FILES``
through ``tasks.task.update``, so the task shows it and raises ONTASKUPDATE.
"""

from __future__ import annotations

import time
from typing import Any

from .. import docstore
from ..args import arg, decode_file, flag, positive_int, upper_keys
from ..context import CallContext
from ..dates import iso_datetime
from ..envelope import Page
from ..errors import PortalError
from ..registry import method
from ..store import Query
from .users import full_name

STORAGE, OBJECT, ATTACHMENT = "disk_storage", "disk_object", "disk_attachment"
_STORAGE_FIELDS = ("ID", "NAME", "CODE", "MODULE_ID", "ENTITY_TYPE", "ENTITY_ID", "ROOT_OBJECT_ID")


def _not_found(raw: Any) -> PortalError:
    return PortalError("ERROR_NOT_FOUND", f"Could not find entity with id `{raw}`")


def _folder(ctx: CallContext, name: str, storage_id: int) -> dict[str, Any]:
    now = int(time.time())
    return docstore.add(
        ctx.portal.store,
        OBJECT,
        {
            "NAME": name,
            "TYPE": "folder",
            "STORAGE_ID": storage_id,
            "PARENT_ID": None,
            "CREATE_TIME": now,
            "UPDATE_TIME": now,
            "CREATED_BY": ctx.auth.user_id,
        },
    )


def storages(ctx: CallContext) -> list[dict[str, Any]]:
    """Every storage, created with its root folder the first time anyone asks."""
    store = ctx.portal.store
    with store.transaction():
        found = docstore.find(store, STORAGE)
        if found:
            return found
        users, _ = store.select("users", Query("json_extract(data, '$.ACTIVE') = 1", limit=None))
        owners = [("Shared drive", "common", "shared_files_s1", "shared_files_s1")]
        owners += [(full_name(u), "user", str(u["ID"]), None) for u in users]
        for name, entity_type, entity_id, code in owners:
            storage = docstore.add(
                store,
                STORAGE,
                {"NAME": name, "CODE": code, "MODULE_ID": "disk"}
                | {"ENTITY_TYPE": entity_type, "ENTITY_ID": entity_id},
            )
            storage["ROOT_OBJECT_ID"] = _folder(ctx, name, int(storage["ID"]))["ID"]
            docstore.put(store, STORAGE, int(storage["ID"]), storage)
            found.append(storage)
    return found


def _storage_view(storage: dict[str, Any]) -> dict[str, Any]:
    """Every value a string but CODE (null when unset), ``ID`` first, as the docs show it."""
    view = {name: storage.get(name) for name in _STORAGE_FIELDS}
    return {k: v if v is None else str(v) for k, v in view.items()}


@method("disk.storage.getlist", scope="disk")
def storage_getlist(ctx: CallContext, params: dict[str, Any]) -> Page:
    rows = [_storage_view(s) for s in storages(ctx)]
    chosen = [r for r in rows if docstore.matches(r, arg(params, "filter"), _STORAGE_FIELDS)]
    docstore.sort(chosen, arg(params, "order"), _STORAGE_FIELDS)
    return docstore.page(chosen, arg(params, "start"))


def _unique(ctx: CallContext, folder_id: int, name: str, rename: bool) -> str:
    """``name``, or ``name (1).ext`` ... with ``generateUniqueName``; a clash is an error."""
    taken = {o["NAME"] for o in docstore.find(ctx.portal.store, OBJECT, PARENT_ID=folder_id)}
    if name not in taken:
        return name
    if not rename:
        raise PortalError("DISK_OBJ_22000", "A file with this name already exists")
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    number = 1
    while f"{stem} ({number}){dot}{ext}" in taken:
        number += 1
    return f"{stem} ({number}){dot}{ext}"


def _upload(ctx: CallContext, params: dict[str, Any], folder: dict[str, Any]) -> dict[str, Any]:
    name = str(upper_keys(arg(params, "data")).get("NAME") or "").strip()
    if not name:
        raise PortalError(
            "DISK_BASE_SERVICE_22001", "Error: required parameter NAME (DISK_BASE_SERVICE_22001)"
        )
    content = arg(params, "fileContent")
    if content is None:
        raise PortalError(
            "ERROR_ARGUMENT", "fileContent is required: the sandbox does not serve upload URLs"
        )
    decoded = decode_file(content)
    if decoded is None:
        raise PortalError("ERROR_COULD_NOT_SAVE_FILE", "Could not save file")
    now = int(time.time())
    with ctx.portal.store.transaction():
        unique = _unique(ctx, int(folder["ID"]), name, flag(arg(params, "generateUniqueName")))
        file = {
            "NAME": unique,
            "TYPE": "file",
            "STORAGE_ID": folder["STORAGE_ID"],
            "PARENT_ID": folder["ID"],
            "SIZE": decoded[1],
            "FILE_ID": ctx.portal.store.next_value("disk_file_content"),
            "CREATE_TIME": now,
            "UPDATE_TIME": now,
            "CREATED_BY": ctx.auth.user_id,
        }
        return _file_view(ctx, docstore.add(ctx.portal.store, OBJECT, file), typed=True)


def _file_view(ctx: CallContext, file: dict[str, Any], typed: bool) -> dict[str, Any]:
    """A file as the upload methods (``typed``: numbers as numbers) or ``disk.file.get`` (every
    value a string) show it."""

    def num(value: Any) -> Any:
        return value if typed else str(value)

    base = ctx.portal.base_url
    return {
        "ID": num(file["ID"]),
        "NAME": file["NAME"],
        "CODE": None,
        "STORAGE_ID": str(file["STORAGE_ID"]),
        "TYPE": "file",
        "PARENT_ID": str(file["PARENT_ID"]),
        "DELETED_TYPE": num(0),
        "GLOBAL_CONTENT_VERSION": num(1),
        "FILE_ID": num(file["FILE_ID"]),
        "SIZE": str(file["SIZE"]),
        "CREATE_TIME": iso_datetime(file["CREATE_TIME"]),
        "UPDATE_TIME": iso_datetime(file["UPDATE_TIME"]),
        "DELETE_TIME": None,
        "CREATED_BY": str(file["CREATED_BY"]),
        "UPDATED_BY": str(file["CREATED_BY"]),
        "DELETED_BY": None if typed else "0",
        "DOWNLOAD_URL": f"{base}/disk/downloadFile/{file['ID']}/",
        "DETAIL_URL": f"{base}/disk/file/{file['ID']}/",
    }


def _object(ctx: CallContext, raw: Any, kind: str) -> dict[str, Any]:
    object_id = positive_int(raw)
    if object_id is None:
        raise PortalError("ERROR_ARGUMENT", "Invalid value of parameter {Parameter #0}")
    storages(ctx)
    found = docstore.get(ctx.portal.store, OBJECT, object_id)
    if found is None or found["TYPE"] != kind:
        raise _not_found(raw)
    return found


@method("disk.folder.uploadfile", scope="disk")
def folder_uploadfile(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return _upload(ctx, params, _object(ctx, arg(params, "id"), "folder"))


@method("disk.storage.uploadfile", scope="disk")
def storage_uploadfile(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    storage_id = positive_int(arg(params, "id"))
    storage = next((s for s in storages(ctx) if s["ID"] == storage_id), None)
    if storage is None:
        raise _not_found(arg(params, "id"))
    return _upload(ctx, params, _object(ctx, storage["ROOT_OBJECT_ID"], "folder"))


@method("disk.file.get", scope="disk")
def file_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return _file_view(ctx, _object(ctx, arg(params, "id"), "file"), typed=False)


@method("tasks.task.files.attach", scope="task")
def task_files_attach(ctx: CallContext, params: dict[str, Any]) -> dict[str, int]:
    raw_task = arg(params, "taskId")
    if raw_task is None:
        raise PortalError(
            "100", "CTaskItem All parameters in the constructor must have real class type"
        )
    task_id = positive_int(raw_task)
    if task_id is None:
        raise PortalError("0", "wrong task id")
    raw_file = arg(params, "fileId")
    if raw_file is None:
        raise PortalError("100", "Could not find value for parameter {fileId}")
    file_id = positive_int(raw_file)
    if file_id is None:
        raise PortalError(
            "100",
            f"Invalid value {raw_file} to match with parameter {{fileId}}. "
            "Should be value of type int.",
        )
    task = ctx.portal.store.get("tasks", task_id)
    if task is None:
        raise PortalError("0", "Access denied")
    storages(ctx)
    file = docstore.get(ctx.portal.store, OBJECT, file_id)
    if file is None or file["TYPE"] != "file":
        raise PortalError("ERROR_CORE", "Insufficient permissions.<br>")
    with ctx.portal.store.transaction():
        attachment = docstore.add(
            ctx.portal.store,
            ATTACHMENT,
            {"OBJECT_ID": file_id, "ENTITY_TYPE": "tasks_task", "ENTITY_ID": task_id},
        )
        attached = [*(task.get("UF_TASK_WEBDAV_FILES") or []), attachment["ID"]]
        ctx.call(
            "tasks.task.update", {"taskId": task_id, "fields": {"UF_TASK_WEBDAV_FILES": attached}}
        )
    return {"attachmentId": int(attachment["ID"])}
