"""Request parameters from a query string and a body, the way the PHP portal reads them.

v2 accepts JSON, form-urlencoded and multipart bodies (PHP bracket nesting via
``b24agent.encoding``) and merges them over the query; v3 accepts a JSON body only. Anything
malformed (bad JSON, bad UTF-8, a multipart body without parts) becomes a clean 400
PortalError here, before a handler can touch the store.
"""

from __future__ import annotations

import base64
import json
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from ..encoding import decode_pairs
from .errors import PortalError
from .v3 import INVALID_JSON

#: Larger bodies are refused with 413 before they are read.
MAX_BODY_BYTES = 32 * 1024 * 1024


def bad_body(description: str, api: str = "v2") -> PortalError:
    code = INVALID_JSON if api == "v3" else "ERROR_ARGUMENT"
    return PortalError(code, description, 400, {"argument": "body"} if api == "v2" else None)


def too_large() -> PortalError:
    return PortalError("ERROR_ARGUMENT", f"Request body over {MAX_BODY_BYTES} bytes", 413)


def decode_form(raw: bytes | str) -> dict[str, Any]:
    """A query string or form body; invalid UTF-8 is an error, not silently replaced."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_body(f"Form data is not valid UTF-8: {exc.__class__.__name__}") from None
    return _as_map(decode_pairs(pairs))


def _as_map(decoded: Any) -> dict[str, Any]:
    """Top-level params are always a map, even when PHP's list rule turned ``0=a&1=b`` into a
    list."""
    return decoded if isinstance(decoded, dict) else {str(i): v for i, v in enumerate(decoded)}


def decode_json(body: bytes, api: str = "v2") -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_body("Request body is not valid UTF-8", api) from None
    except (ValueError, RecursionError) as exc:
        raise bad_body(f"Request body is not valid JSON: {str(exc)[:100]}", api) from None


def _decode_multipart(body: bytes, content_type: str) -> dict[str, Any]:
    """Text parts become fields; a file part becomes ``[filename, base64]``, the form Bitrix24
    uses for file fields, so handlers see one shape whichever way a file arrives."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise bad_body("multipart body without a boundary")
    pairs: list[tuple[str, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            pairs += [(f"{name}[0]", filename), (f"{name}[1]", base64.b64encode(payload).decode())]
            continue
        try:
            pairs.append((name, payload.decode("utf-8")))
        except UnicodeDecodeError:
            raise bad_body(f"multipart field {name!r} is not valid UTF-8") from None
    return _as_map(decode_pairs(pairs))


def v2_params(query: str, body: bytes, content_type: str) -> dict[str, Any]:
    """Query merged with the body, body keys winning (PHP's $_REQUEST order)."""
    params = decode_form(query) if query else {}
    if not body.strip():
        return params
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json" or (not kind and body.lstrip()[:1] in (b"{", b"[")):
        decoded = decode_json(body)
        if decoded == []:
            decoded = {}
        if not isinstance(decoded, dict):
            raise bad_body("JSON body must be an object")
    elif kind == "multipart/form-data":
        decoded = _decode_multipart(body, content_type)
    else:
        decoded = decode_form(body)
    params.update(decoded)
    return params


def v3_params(body: bytes, content_type: str, *, batch: bool = False) -> dict[str, Any]:
    """A JSON object body; the query string is never read (rest-v3.md). A ``batch`` body is a
    JSON array of calls at the root; it is handed on as ``{"calls": [...]}``. An object keyed
    ``"0".."n-1"`` counts as that array (PHP decodes both alike; the vendor's JS SDK sends it so,
    with the app's ``auth`` beside the numbered calls)."""
    if not body.strip():
        return {}
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in ("", "application/json"):
        raise bad_body(f"REST 3.0 takes a JSON body, not {kind}", "v3")
    decoded = decode_json(body, "v3")
    if batch and isinstance(decoded, list):
        return {"calls": decoded}
    if batch and isinstance(decoded, dict) and "0" in decoded:
        numbered = {k: v for k, v in decoded.items() if k != "auth"}
        if list(numbered) == [str(i) for i in range(len(numbered))]:
            rest = {k: v for k, v in decoded.items() if k == "auth"}
            return {"calls": list(numbered.values()), **rest}
    if not isinstance(decoded, dict):
        raise bad_body("JSON body must be an object", "v3")
    return decoded
