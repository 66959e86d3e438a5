"""An HTTP answer's body read with a ceiling on its decoded size.

The portal's answers and the token server's are read as a stream and cut off once they pass
their ceiling, so a huge answer or a gzip bomb (kilobytes on the wire, gigabytes decoded)
cannot fill the memory of a long-lived process (b24-mcp, the broker, the warm server). The
ceiling holds only with urllib3 2.6 or later (``dependencies.check_urllib3``), so importing this
module with an older one is refused.
"""

from __future__ import annotations

import requests
import urllib3

from ..dependencies import check_urllib3

check_urllib3(urllib3.__version__)

__all__ = ["READ_CHUNK", "read_capped"]

#: Decoded bytes read at a time (a 3 MB export page is a dozen reads).
READ_CHUNK = 256 * 1024


def read_capped(reply: requests.Response, cap: int) -> bytes | None:
    """The decoded body of ``reply`` (requested with ``stream=True``), or None once it passes
    ``cap`` bytes. Errors of requests while reading (a dropped connection, bad gzip) propagate."""
    chunks: list[bytes] = []
    size = 0
    for chunk in reply.iter_content(READ_CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
