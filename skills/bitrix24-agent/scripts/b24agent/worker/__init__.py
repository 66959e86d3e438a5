"""The offline event worker: every portal event reaches the handler, none is lost, across crashes.

Bitrix24 never retries an online event, and offline rows taken with ``clear=1`` vanish if the
taker dies. This package reserves rows with ``clear=0`` and keeps their ``process_id`` on disk
before handling anything, so every row ends up handled, dead-lettered, or still reserved under
an id the worker remembers (or adopts back). One module per job:

    queue.py         the event.offline.* calls and which of them may be resent
    checkpoint.py    reservations and per-event outcomes on disk (snapshot + journal)
    adopt.py         taking over reservations a crash left without a checkpoint
    handlers.py      command / Python callable / JSONL sink behind one contract
    dlq.py           the local dead-letter file
    loop.py          reserve -> checkpoint -> handle -> clear, and the DLQ replay
    authenticity.py  the application_token check
    wakeup.py        the ONOFFLINEEVENT notice endpoint (--listen): wake at once, token checked
    delivery.py      the JSON a handler receives and its stable delivery id
    jsonl.py         fsynced JSON Lines files
    lock.py          one worker per portal and state folder

Handlers written in Python raise ``PermanentFailure`` to send an event straight to the DLQ.
"""

from .handlers import PERMANENT_EXIT_CODE, PermanentFailure

__all__ = ["PERMANENT_EXIT_CODE", "PermanentFailure"]
