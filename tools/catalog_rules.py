"""How the catalog builder classifies a documented method: its pack and its risk.

Only ``build.py`` imports this module; at run time the package reads the generated
``methods.json`` alone, so changing a rule means re-running the builder and committing both.

Risk answers one question for the safety layer: what does the call do to the portal?

- ``read``: nothing the portal keeps changes.
- ``write``: it changes or creates something, sends something, or moves a workflow on.
- ``destructive``: data is gone afterwards from the user's point of view (delete, remove, clear,
  unbind/unregister/unset, terminate/kill/stop, reset), including moves to a trash that is
  time-limited and may be switched off, "set the whole collection" calls that drop the rows
  they are not given, and steps the caller cannot take back: leaving a chat (the docs: "removes
  the current user from the chat") and handing ownership to someone else (only an owner may call
  ``setowner``, so afterwards only the new owner can hand it back).

The builder decides in this order and records which rule fired (``build.py --report``):

1. ``OVERRIDES``: a per-method verdict with its reason, where the verb misleads;
2. the last segment of the name (the verb) against the verb tables below;
3. for a verb in no table, a title that starts like a lookup ("Get ...", "Find ...") reads;
4. everything else is a write (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from b24agent.catalog.loader import Risk

DOCS_BASE = "https://apidocs.bitrix24.com/"
"""apidocs.bitrix24.com is built from bitrix24/b24restdocs: ``<path>.md`` is served as
``<path>.html`` (see the repository's README and its 404.yaml links)."""


@dataclass(frozen=True)
class Pack:
    """A group of methods an operator enables as one (``B24_PACKS`` / ``--packs``).

    ``patterns`` are exact method names or ``prefix.*``; a method belongs to the pack with the most
    specific match (an exact name beats any prefix, a longer prefix beats a shorter one).
    ``extra`` marks packs beyond the twelve the skill brief names.
    """

    name: str
    description: str
    patterns: tuple[str, ...]
    extra: bool = False


PACKS: tuple[Pack, ...] = (
    Pack(
        "core",
        "CRM, tasks, users and departments, events and the offline queue, batch",
        (
            "batch",
            "profile",
            "user.*",
            "department.*",
            "crm.*",
            "tasks.*",
            "task.*",
            "event.*",
        ),
    ),
    Pack(
        "comms",
        "chats, notifications, bots, open lines and connectors, SMS/e-mail providers, "
        "mailboxes, telephony",
        (
            "im.*",
            "imbot.*",
            "imopenlines.*",
            "imconnector.*",
            "messageservice.*",
            "mailservice.*",
            "mail.*",
            "telephony.*",
            "voximplant.*",
            "call.*",
        ),
    ),
    Pack(
        "automation",
        "business processes and robots, CRM triggers, universal lists, RPA processes",
        ("bizproc.*", "crm.automation.*", "lists.*", "rpa.*"),
    ),
    Pack(
        "collab",
        "workgroups, collabs and projects, the feed, votes",
        ("sonet_group.*", "socialnetwork.*", "log.*", "vote.*"),
    ),
    Pack(
        "content",
        "Drive files and folders, document generator, knowledge bases",
        ("disk.*", "file.*", "files.*", "documentgenerator.*", "crm.documentgenerator.*", "note.*"),
    ),
    Pack(
        "boards",
        "scrum (backlog, sprints, epics, scrum kanban) and task kanban / My Plan stages",
        ("tasks.api.scrum.*", "tasks.scrum.*", "task.stages.*"),
    ),
    Pack(
        "commerce",
        "orders, payments, deliveries, cash registers, the product catalog, prices and "
        "currencies, CRM products and payments",
        (
            "sale.*",
            "catalog.*",
            "salescenter.*",
            "crm.catalog.*",
            "crm.product.*",
            "crm.productsection.*",
            "crm.measure.*",
            "crm.vat.*",
            "crm.currency.*",
            "crm.paysystem.*",
            "crm.persontype.*",
            "crm.orderentity.*",
            "crm.item.payment.*",
        ),
    ),
    Pack(
        "services",
        "online booking, calendar, work time and time tracking",
        ("booking.*", "calendar.*", "timeman.*"),
    ),
    Pack(
        "platform",
        "AI (CoPilot) engines, app entity storage, app and user options, widgets (placements), "
        "custom field types, BI connectors, push&pull channel",
        (
            "ai.*",
            "entity.*",
            "biconnector.*",
            "app.option.*",
            "user.option.*",
            "placement.*",
            "userfieldtype.*",
            "userfieldconfig.*",
            "pull.*",
        ),
    ),
    Pack("sites", "sites, landing pages and knowledge-base sites", ("landing.*",)),
    Pack(
        "compliance",
        "consents, e-signature (sign.b2e) and the security event log",
        ("userconsent.*", "sign.*", "main.eventlog.*"),
    ),
    Pack(
        "diagnostics",
        "what the portal and these credentials can do: methods, scopes, features, events, "
        "rights, server time, REST 3.0 self-description",
        (
            "method.get",
            "methods",
            "events",
            "feature.get",
            "scope",
            "server.time",
            "app.info",
            "access.name",
            "user.access",
            "user.admin",
            "documentation",
            "rest.*",
        ),
    ),
    Pack(
        "hr",
        "company structure in REST 3.0 (departments, teams, employees) and HCM Link payroll "
        "integration; its own pack because it edits the org chart, which core users rarely need",
        ("humanresources.*",),
        extra=True,
    ),
)

# --- risk by verb (the last segment of the name) ----------------------------------------------

READ_VERBS = frozenset(
    {
        "get",
        "list",
        "fields",
        "getfields",
        "getlist",
        "search",
        "current",
        "info",
        "count",
        "status",  # imconnector/timeman/voximplant.sip/...status report state, never set it
        "types",
        "tail",  # main.eventlog.tail, sign.b2e.*.tail: entries after a cursor, nothing consumed
        "download",  # file contents or a download link
    }
)
READ_PREFIXES = ("get", "list", "is", "search", "find")

DESTRUCTIVE_VERBS = frozenset(
    {
        "clear",
        "reset",
        "terminate",
        "kill",
        "stop",
        "uninstall",
        "unregister",
        "unset",
        "unsubscribe",
        "markdelete",
        "markdeleted",
        "markdeletedblock",
        "markfolderdelete",
        "leave",  # im/imbot chat.leave: removes the caller (or the bot) from the chat
        "setowner",  # im/imbot chat, sonet_group: hands ownership over; only the owner may
    }
)
DESTRUCTIVE_PREFIXES = ("delete", "remove", "unbind")  # unbind, unbindingFromMenu...

READ_TITLE_STARTS = ("get ", "retrieve ", "find ", "check ", "determine ", "view ")
"""Titles of lookups whose verb is a noun (``server.time``, ``user.admin``, ``crm.enum.*``)."""

# --- per-method verdicts where the verb misleads ------------------------------------------------

_CARD_SCOPE_ALL = "forces one card layout on everyone and deletes every user's personal layout"
_REPLACES_ROWS = "replaces the whole list: existing rows not passed are deleted"
_REPLACES_LINKS = "replaces the whole set: links not passed are removed"
_OFFSET_CONFIRMS = "its offset parameter confirms earlier events, which are then gone"
_PUBLIC_LINK = "creates a public link when there is none, exposing the object to anyone"
_TOKEN_LINK = "creates a one-time download link that carries an authorization token"

OVERRIDES: dict[str, tuple[Risk, str]] = {
    # A "get" that changes the queue it reads from.
    "event.offline.get": (
        "write",
        "reserves the rows it returns and, with the default clear=1, deletes them from the queue",
    ),
    "im.v2.event.get": ("write", _OFFSET_CONFIRMS),
    "imbot.v2.event.get": ("write", _OFFSET_CONFIRMS),
    "im.notify.read.list": ("write", "marks the listed notifications read or unread"),
    "disk.file.getexternallink": ("write", _PUBLIC_LINK),
    "disk.folder.getexternallink": ("write", _PUBLIC_LINK),
    "crm.invoice.getexternallink": ("write", _PUBLIC_LINK),
    "disk.storage.getforapp": ("write", "creates the app's storage when it does not exist yet"),
    "salescenter.payment.getpublicurl": (
        "write",
        "generates a payment link (and QR code) through which anyone holding it can pay",
    ),
    "im.v2.file.download": ("write", _TOKEN_LINK),
    "imbot.v2.file.download": ("write", _TOKEN_LINK),
    "entity.rights": ("write", "reads or replaces the storage's access rights"),
    "imopenlines.session.open": (
        "write",
        "'open' may start an open-line session for the user code; kept a write (fail closed)",
    ),
    # Deletion without a delete verb.
    "event.offline.clear": (
        "destructive",
        "deletes queue rows for good; with only process_id it drops every row the process "
        "reserved, handled or not",
    ),
    "imconnector.delete.messages": ("destructive", "deletes sent messages (verb is not last)"),
    "crm.entity.mergebatch": (
        "destructive",
        "merging folds duplicates into one record and deletes the others; no undo",
    ),
    "crm.company.details.configuration.forcecommonscopeforall": ("destructive", _CARD_SCOPE_ALL),
    "crm.contact.details.configuration.forcecommonscopeforall": ("destructive", _CARD_SCOPE_ALL),
    "crm.deal.details.configuration.forcecommonscopeforall": ("destructive", _CARD_SCOPE_ALL),
    "crm.item.details.configuration.forcecommonscopeforall": ("destructive", _CARD_SCOPE_ALL),
    "crm.lead.details.configuration.forcecommonscopeforall": ("destructive", _CARD_SCOPE_ALL),
    "crm.deal.productrows.set": ("destructive", _REPLACES_ROWS),
    "crm.lead.productrows.set": ("destructive", _REPLACES_ROWS),
    "crm.quote.productrows.set": ("destructive", _REPLACES_ROWS),
    "crm.item.productrow.set": ("destructive", _REPLACES_ROWS),
    "catalog.price.modify": ("destructive", "prices of the product not passed are deleted"),
    "crm.company.contact.items.set": ("destructive", _REPLACES_LINKS),
    "crm.contact.company.items.set": ("destructive", _REPLACES_LINKS),
    "crm.deal.contact.items.set": ("destructive", _REPLACES_LINKS),
    "crm.lead.contact.items.set": ("destructive", _REPLACES_LINKS),
    "crm.quote.contact.items.set": ("destructive", _REPLACES_LINKS),
    "humanresources.node.member.set": ("destructive", "members not passed leave the department"),
    "sale.propertyvalue.modify": ("destructive", "order property values not passed are removed"),
    # A delete/remove verb that loses nothing.
    "task.item.deletefromfavorite": ("write", "only takes the task off the user's favorites"),
    "tasks.task.favorite.remove": ("write", "only takes the task off the user's favorites"),
    "tasks.task.result.deletefromcomment": (
        "write",
        "only unpins the comment as the task result; the comment stays",
    ),
    # Self-description methods whose verb is a noun and whose title says "Overview".
    "documentation": ("read", "returns the REST 3.0 OpenAPI description"),
    "rest.documentation.openapi": ("read", "returns the REST 3.0 OpenAPI description"),
    "landing.site.fullexport": ("read", "returns the site as an array for import elsewhere"),
    # The batch envelope: the policy layer rates it by its riskiest command.
    "batch": ("write", "composite: as risky as its riskiest command (policy checks each one)"),
}

# Read from their docs pages (bitrix24/b24restdocs 5988ed1) because the verb alone does not say
# what they do, and left where the verb rules put them: cancel, cancellist, unconfirm (inventory
# documents go back to unconducted, balances restored; conduct again to redo), finish, transfer,
# skip, join (open-line dialogs end or move; the dialog stays), restore, restorefromversion,
# sharetouser, share, archive, unpublic, markundeletedblock, move, mute, hide, pause, close,
# defer, renew, complete, approve, disapprove, confirm, deactivatephone (state changes anyone
# with the right can undo: write); getpublicurl and getpreview of landing sites and pages,
# imopenlines.config.path.get, voximplant.url.get, lists.element.get.file.url,
# task.item.getfiles, landing.syspage.getspecialpage, the catalog and vote ``download`` methods
# (they return what exists: read); im.v2.event.unsubscribe (stops recording events, which are
# then never kept: destructive by its verb).

COMPOSITE = frozenset({"batch"})
"""Methods whose effect is the sum of the commands they carry."""

# --- OAuth-only methods -------------------------------------------------------------------------

APP_ONLY = frozenset(
    {
        # Pages that say the method works only in an application context (or whose errors say
        # "Application context required"), read from bitrix24/b24restdocs 5988ed1. Left out:
        # app.info (webhooks get SCOPE/LICENSE back) and crm.activity.add/get/update/delete
        # (only app-provided activity types need the app).
        "app.option.get",
        "app.option.set",
        "bizproc.activity.add",
        "bizproc.activity.delete",
        "bizproc.activity.list",
        "bizproc.activity.update",
        "bizproc.robot.add",
        "bizproc.robot.delete",
        "bizproc.robot.list",
        "bizproc.robot.update",
        "bizproc.workflow.template.add",
        "bizproc.workflow.template.delete",
        "bizproc.workflow.template.update",
        "crm.activity.type.add",
        "crm.activity.type.delete",
        "crm.activity.type.list",
        "crm.automation.trigger.add",
        "crm.automation.trigger.delete",
        "crm.automation.trigger.execute",
        "crm.automation.trigger.list",
        "disk.storage.getforapp",
        "disk.storage.rename",
        "entity.add",
        "entity.delete",
        "entity.get",
        "entity.item.add",
        "entity.item.delete",
        "entity.item.get",
        "entity.item.property.add",
        "entity.item.property.delete",
        "entity.item.property.get",
        "entity.item.property.update",
        "entity.item.update",
        "entity.rights",
        "entity.section.add",
        "entity.section.delete",
        "entity.section.get",
        "entity.section.update",
        "entity.update",
        "event.bind",
        "event.get",
        "event.offline.clear",
        "event.offline.error",
        "event.offline.get",
        "event.offline.list",
        "event.test",
        "event.unbind",
        "events",
        "humanresources.hcmlink.company.add",
        "humanresources.hcmlink.company.delete",
        "humanresources.hcmlink.company.list",
        "humanresources.hcmlink.company.update",
        "humanresources.hcmlink.company.user.list",
        "humanresources.hcmlink.employee.list",
        "humanresources.hcmlink.employee.set",
        "humanresources.hcmlink.field.value.set",
        "humanresources.hcmlink.job.status.get",
        "humanresources.hcmlink.job.update",
        "imconnector.activate",
        "imconnector.chat.name.set",
        "imconnector.connector.data.set",
        "imconnector.delete.messages",
        "imconnector.list",
        "imconnector.register",
        "imconnector.send.messages",
        "imconnector.send.status.delivery",
        "imconnector.send.status.reading",
        "imconnector.status",
        "imconnector.unregister",
        "imconnector.update.messages",
        "messageservice.message.status.update",
        "messageservice.sender.add",
        "messageservice.sender.delete",
        "messageservice.sender.list",
        "messageservice.sender.update",
        "placement.bind",
        "placement.get",
        "placement.list",
        "placement.unbind",
        "pull.application.config.get",
        "pull.application.event.add",
        "pull.application.push.add",
        "sign.b2e.company.provider.list",
        "sign.b2e.document.get",
        "sign.b2e.document.send",
        "sign.b2e.hcmlink.document.get",
        "sign.b2e.mysafe.tail",
        "sign.b2e.personal.tail",
        "telephony.externalcall.finish",
        "telephony.externalcall.register",
        "telephony.externalline.add",
        "telephony.externalline.delete",
        "telephony.externalline.get",
        "telephony.externalline.update",
        "user.option.get",
        "user.option.set",
    }
)

# --- documented methods the TSV extract lacks ----------------------------------------------------

_OUTSIDE_EXTRACT = (
    "documented under settings/, outside the api-reference tree the TSV was extracted from"
)

SUPPLEMENT: tuple[dict[str, str], ...] = (
    {
        "method": "batch",
        "api": "v2",
        "scope": "basic",
        "doc_path": "settings/how-to-call-rest-api/batch.md",
        "deprecated": "0",
        "title": "Run up to 50 calls in one request batch",
        "reason": _OUTSIDE_EXTRACT + "; the TSV only has the REST 3.0 batch",
    },
    {
        "method": "pull.application.config.get",
        "api": "v2",
        "scope": "pull",
        "doc_path": "settings/interactivity/push-and-pull/pull-application-config-get.md",
        "deprecated": "0",
        "title": "Get the push&pull server settings for the app pull.application.config.get",
        "reason": _OUTSIDE_EXTRACT,
    },
    {
        "method": "pull.application.event.add",
        "api": "v2",
        "scope": "pull",
        "doc_path": "settings/interactivity/push-and-pull/pull-application-event-add.md",
        "deprecated": "0",
        "title": "Send an event to the app's real-time channel pull.application.event.add",
        "reason": _OUTSIDE_EXTRACT,
    },
    {
        "method": "pull.application.push.add",
        "api": "v2",
        "scope": "pull",
        "doc_path": "settings/interactivity/push-and-pull/pull-application-push-add.md",
        "deprecated": "0",
        "title": "Send a push notification to a mobile device pull.application.push.add",
        "reason": _OUTSIDE_EXTRACT,
    },
)

# --- ordering inside a pack -----------------------------------------------------------------------

MOST_USED: tuple[str, ...] = (
    # core: the calls behind the user scenarios, most frequent first
    "crm.lead.list",
    "crm.lead.get",
    "crm.lead.add",
    "crm.lead.update",
    "crm.deal.list",
    "crm.deal.get",
    "crm.deal.add",
    "crm.deal.update",
    "crm.contact.list",
    "crm.contact.get",
    "crm.contact.add",
    "crm.contact.update",
    "crm.company.list",
    "crm.company.get",
    "crm.company.add",
    "crm.company.update",
    "crm.item.list",
    "crm.item.get",
    "crm.item.add",
    "crm.item.update",
    "tasks.task.list",
    "tasks.task.get",
    "tasks.task.add",
    "tasks.task.update",
    "tasks.task.complete",
    "user.current",
    "user.get",
    "user.search",
    "batch",
    "profile",
    "crm.timeline.comment.add",
    "crm.activity.list",
    "crm.deal.contact.add",
    "crm.status.list",
    "crm.category.list",
    "crm.duplicate.findbycomm",
    "task.checklistitem.add",
    "department.get",
    "event.bind",
    "event.offline.get",
    "event.offline.clear",
    "crm.lead.delete",
    "crm.deal.delete",
    "crm.contact.delete",
    "crm.company.delete",
    # other packs: the calls the scenario chains start from
    "im.message.add",
    "im.notify.personal.add",
    "im.notify.system.add",
    "im.chat.add",
    "imbot.command.register",
    "imbot.command.answer",
    "bizproc.workflow.start",
    "bizproc.workflow.template.list",
    "sonet_group.create",
    "sonet_group.user.add",
    "log.blogpost.add",
    "disk.folder.uploadfile",
    "disk.storage.getlist",
    "calendar.event.add",
    "calendar.event.get",
    "tasks.api.scrum.task.update",
    "method.get",
    "scope",
    "app.info",
    "feature.get",
    "server.time",
)
