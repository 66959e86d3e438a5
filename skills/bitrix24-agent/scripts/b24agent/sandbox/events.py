"""The sandbox's event bus: what happens after a CRM record or a task changes.

Bitrix24 tells applications about changes two ways (api-reference/events/index.md):

- online: a form-encoded POST to the handler URL an app registered with ``event.bind``, sent from
  a queue in the background and never retried. The sandbox posts only to loopback addresses, so
  a test can run a tiny HTTP server and nothing ever leaves the machine.
- offline: a row in the portal's queue that the app drains with ``event.offline.get``. Rows
  merge by MESSAGE_ID. A change made by the app itself with the ``auth_connector`` its binding
  names is not queued; without one it is, like anyone's (offline-events.md "How to Avoid
  Cycles": the app's own ``crm.deal.update`` "adds an event back to the queue"), so a binding
  without a connector echoes the app's own writes.

``emit`` runs inside the handler's store transaction, so queue rows commit or roll back with the
change itself, and online posts leave only after the commit.
"""

from __future__ import annotations

import ipaddress
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from ..encoding import flatten_params
from .admin import admin_op
from .fixtures import message_id

if TYPE_CHECKING:
    from .context import CallContext
    from .portal import Portal

__all__ = ["EVENTS_BY_SCOPE", "EventBus", "event_scope", "is_loopback_url"]

#: Events the sandbox knows, by the scope an app needs to bind them (events.md); "basic" ones
#: need no scope. The CRM and task events fire; the others can be bound but never happen here.
EVENTS_BY_SCOPE: dict[str, tuple[str, ...]] = {
    "basic": (
        "ONAPPUNINSTALL",
        "ONAPPINSTALL",
        "ONAPPUPDATE",
        "ONAPPPAYMENT",
        "ONAPPTEST",
        "ONAPPMETHODCONFIRM",
        "ONOFFLINEEVENT",
    ),
    "user": ("ONUSERADD",),
    "crm": tuple(
        f"ONCRM{entity}{action}"
        for entity in ("LEAD", "DEAL", "CONTACT", "COMPANY")
        for action in ("ADD", "UPDATE", "DELETE")
    ),
    "task": ("ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE"),
}

#: The queue-changed notice: it can only be bound online (the vendor's ``disableOffline``).
OFFLINE_NOTICE = "ONOFFLINEEVENT"
#: Minimum seconds between two ONOFFLINEEVENT posts to one handler (on-offline-event.md).
NOTICE_MIN_TIMEOUT_S = 1.0
#: Delivery attempts kept for the admin surface.
LOG_SIZE = 1000
POST_TIMEOUT_S = 5.0


def event_scope(name: str) -> str | None:
    """The scope an event belongs to, or None if the sandbox does not know it."""
    return next((s for s, names in EVENTS_BY_SCOPE.items() if name in names), None)


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs on localhost or a loopback IP: the only handlers the sandbox calls."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


# The sandbox's own loopback calls must never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EventBus:
    """Queues offline rows and posts online events for one portal."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._lock = threading.Lock()
        self._outbox: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._generation = 0
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self._last_notice: dict[int, float] = {}

    # --- raising events ---------------------------------------------------------------------

    def emit(self, ctx: CallContext, name: str, data: dict[str, Any]) -> None:
        """Raise event ``name`` with ``data`` for every binding; call inside the change's
        transaction."""
        store = self._portal.store
        queued_apps: set[str] = set()
        for binding in store.bindings(event=name):
            if binding["handler"]:
                self._post_after_commit(binding, name, data)
                continue
            if (
                binding["connector"]
                and ctx.auth.client_id == binding["app"]
                and ctx.auth_connector == binding["connector"]
            ):
                continue
            store.queue_offline(
                binding["app"],
                binding["connector"],
                name,
                data,
                {"user_id": ctx.auth.user_id},
                message_id(name, data),
            )
            queued_apps.add(binding["app"])
        for app in queued_apps:
            self._notify_queue(app)

    def _notify_queue(self, app: str) -> None:
        """ONOFFLINEEVENT to the app's online handlers, at most once a second each."""
        now = time.monotonic()
        for binding in self._portal.store.bindings(app=app, event=OFFLINE_NOTICE):
            with self._lock:
                last = self._last_notice.get(binding["id"], 0.0)
                if now - last < NOTICE_MIN_TIMEOUT_S:
                    continue
                self._last_notice[binding["id"]] = now
            self._post_after_commit(binding, OFFLINE_NOTICE, {})

    def _post_after_commit(self, binding: dict[str, Any], name: str, data: dict[str, Any]) -> None:
        delivery = {
            "event_handler_id": binding["id"],
            "handler": binding["handler"],
            "event": name,
            "form": self._form(binding, name, data),
        }
        with self._lock:
            generation = self._generation
        self._portal.store.on_commit(lambda: self._enqueue(generation, delivery))

    def _form(self, binding: dict[str, Any], name: str, data: dict[str, Any]) -> str:
        """The POST body: ``event``, ``event_handler_id``, ``data[...]``, ``ts`` and
        ``auth[...]`` in PHP bracket form, as events/index.md shows it. OAuth tokens only in
        the queue notice, which carries a working pair (on-offline-event.md; index.md: the
        refresh token comes with onOfflineEvent): the docs allow other events without them
        (an automation acted), and handlers must not rely on them."""
        portal = self._portal
        base = portal.base_url.rstrip("/")
        payload = {
            "event": name,
            "event_handler_id": binding["id"],
            "data": data,
            "ts": int(time.time()),
            "auth": {
                "domain": urlsplit(base).netloc,
                "client_endpoint": f"{base}/rest/",
                "server_endpoint": f"{base}/rest/",
                "member_id": portal.credentials.member_id,
                "application_token": portal.credentials.application_token,
                "scope": event_scope(name) or "basic",
                "status": "L",
            },
        }
        if name == OFFLINE_NOTICE:
            access, refresh = portal.oauth.issue()
            lifetime = portal.config.token_lifetime_s
            payload["auth"].update(access_token=access, expires_in=lifetime, refresh_token=refresh)
        return urlencode(flatten_params(payload))

    # --- delivery ---------------------------------------------------------------------------

    def _enqueue(self, generation: int, delivery: dict[str, Any]) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._pending += 1
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._run, name="sandbox-events", daemon=True
                )
                self._worker.start()
        self._outbox.put((generation, delivery))

    def _run(self) -> None:
        while True:
            generation, delivery = self._outbox.get()
            try:
                with self._lock:
                    current = generation == self._generation
                if current:
                    outcome = self._send(delivery)
                    with self._lock:
                        if generation == self._generation:
                            self._log.append(outcome)
            finally:
                with self._lock:
                    if generation == self._generation:
                        self._pending -= 1
                    self._idle.notify_all()

    @staticmethod
    def _send(delivery: dict[str, Any]) -> dict[str, Any]:
        """POST once; the outcome is recorded, never retried (events/index.md)."""
        outcome = {
            "event": delivery["event"],
            "event_handler_id": delivery["event_handler_id"],
            "handler": delivery["handler"],
            "ts": time.time(),
        }
        if not is_loopback_url(delivery["handler"]):
            return {**outcome, "status": None, "error": "handler is not a loopback address"}
        request = urllib.request.Request(
            delivery["handler"],
            data=delivery["form"].encode("ascii"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with _OPENER.open(request, timeout=POST_TIMEOUT_S) as response:
                return {**outcome, "status": response.status, "error": None}
        except urllib.error.HTTPError as exc:
            return {**outcome, "status": exc.code, "error": None}
        except (OSError, ValueError) as exc:
            return {**outcome, "status": None, "error": type(exc).__name__}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every committed delivery was attempted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def deliveries(self) -> list[dict[str, Any]]:
        """Attempted online deliveries, oldest first."""
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        """Forget the log and drop deliveries not yet sent."""
        with self._lock:
            self._generation += 1
            self._pending = 0
            self._log.clear()
            self._last_notice.clear()
            self._idle.notify_all()


@admin_op("GET", "events-delivered")
@admin_op("POST", "events-delivered")
def _delivered(portal: Portal, payload: dict[str, Any]) -> Any:
    """Online deliveries attempted so far, after waiting (up to ``wait`` s, default 5) for the
    ones already committed: tests assert on deliveries without sleeping."""
    try:
        wait = float(payload.get("wait", 5))
    except (TypeError, ValueError):
        wait = 5.0
    idle = portal.events.wait_idle(min(max(wait, 0.0), 30.0))
    return {"idle": idle, "deliveries": portal.events.deliveries()}
