"""An HTTP answer's body read with a ceiling on its decoded size and a deadline.

The portal's answers and the token server's are read as a stream and cut off once they pass
their ceiling, so a huge answer or a gzip bomb (kilobytes on the wire, gigabytes decoded)
cannot fill the memory of a long-lived process (b24-mcp, the broker, the warm server). The
ceiling holds only with urllib3 2.6 or later (``dependencies.check_urllib3``), so importing this
module with an older one is refused. The deadline (deadline.py) ends an answer that trickles
in, which the per-read timeout alone would wait for without end; an answer read to its end by
its own length or chunking is whole even when the deadline struck a moment later (before its
watch ended), so it is never reported as a timeout.
"""

from __future__ import annotations

from typing import Any

import requests
import urllib3

from ..dependencies import check_urllib3
from . import deadline

check_urllib3(urllib3.__version__)

__all__ = ["READ_CHUNK", "AnswerTimeout", "read_capped"]

#: Decoded bytes read at a time (a 3 MB export page is a dozen reads).
READ_CHUNK = 256 * 1024


class AnswerTimeout(requests.exceptions.Timeout):
    """The answer did not arrive whole by its deadline; its connection was cut. ``status``: the
    answer's HTTP status, None when the deadline struck before its head was in."""

    def __init__(self, status: int | None) -> None:
        super().__init__("the answer did not arrive whole by its deadline")
        self.status = status


def read_capped(
    reply: requests.Response, cap: int, cut: deadline.Cut | None = None
) -> bytes | None:
    """The decoded body of ``reply`` (requested with ``stream=True``), or None once it passes
    ``cap`` bytes. Errors of requests while reading (a dropped connection, bad gzip) propagate;
    once ``cut`` (``deadline.within``, entered before the request) has passed, a read that did
    not end whole ends with AnswerTimeout."""
    if cut is None:
        return _read(reply, cap)
    if cut.passed:  # while the head came: http.client takes the cut's end of file for its end
        raise AnswerTimeout(None)
    deadline.adopt(reply.raw)  # a session without rest/pools.py: watch the body at least
    try:
        body = _read(reply, cap)
    except requests.RequestException:
        if not cut.passed:
            raise
        body = None
    if cut.passed and (body is None or not _delimited(reply.raw)):
        raise AnswerTimeout(reply.status_code)
    return body


def _delimited(raw: Any) -> bool:
    """Whether the answer's end was known from its headers (a Content-Length, which urllib3
    enforces, or chunks): read to that end, it is whole. An answer that ends where the
    connection closes cannot tell its end from a cut."""
    chunked = bool(getattr(raw, "chunked", False))
    return chunked or getattr(raw, "length_remaining", None) is not None


def _read(reply: requests.Response, cap: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    for chunk in reply.iter_content(READ_CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
