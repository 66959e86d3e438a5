"""An HTTP answer's body read with a ceiling on its decoded size and a deadline.

The portal's answers and the token server's are read as a stream and cut off once they pass
their ceiling, so a huge answer or a gzip bomb (kilobytes on the wire, gigabytes decoded)
cannot fill the memory of a long-lived process (b24-mcp, the broker, the warm server). The
ceiling holds only with urllib3 2.6 or later (``dependencies.check_urllib3``), so importing this
module with an older one is refused. The deadline (deadline.py) ends an answer that trickles
in, which the per-read timeout alone would wait for without end.
"""

from __future__ import annotations

import requests
import urllib3

from ..dependencies import check_urllib3
from .deadline import cut_at

check_urllib3(urllib3.__version__)

__all__ = ["READ_CHUNK", "AnswerTimeout", "read_capped"]

#: Decoded bytes read at a time (a 3 MB export page is a dozen reads).
READ_CHUNK = 256 * 1024


class AnswerTimeout(requests.exceptions.Timeout):
    """The answer did not arrive whole by its deadline; its connection was cut."""


def read_capped(reply: requests.Response, cap: int, deadline: float | None = None) -> bytes | None:
    """The decoded body of ``reply`` (requested with ``stream=True``), or None once it passes
    ``cap`` bytes. Errors of requests while reading (a dropped connection, bad gzip) propagate;
    past ``deadline`` (``time.monotonic()``; see deadline.py) the read ends with AnswerTimeout."""
    if deadline is None:
        return _read(reply, cap)
    with cut_at(reply.raw, deadline) as cut:
        try:
            body = _read(reply, cap)
        except requests.RequestException:
            if cut is None or not cut.passed:
                raise
            body = None
    if cut is not None and cut.passed:
        raise AnswerTimeout("the answer did not arrive whole by its deadline")
    return body


def _read(reply: requests.Response, cap: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    for chunk in reply.iter_content(READ_CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
