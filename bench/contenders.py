"""One contender doing one job, in its own process, so its wall time and peak memory are its own.

    contenders.py export fast_bitrix24|b24pysdk_as_list|b24pysdk_as_list_fast|b24_library
    contenders.py write  fast_bitrix24|b24pysdk_call_batches|b24_call_many  COUNT

The portal is BENCH_WEBHOOK_URL (a sandbox webhook). Each prints one JSON line: rows seen and
distinct ids (export) or leads created (write), which the harness checks against the seed.
Peers are used exactly as their READMEs show; the only change is b24pysdk's hard-coded
``https://`` base URL, pointed at the plain-HTTP sandbox.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

WEBHOOK_URL = os.environ.get("BENCH_WEBHOOK_URL", "")
LIST_METHOD = "crm.lead.list"
#: Batches our writers send at once (``--parallel``); the adds are independent of each other.
PARALLEL = 20


def lead_fields(i: int) -> dict[str, Any]:
    """The same lead for every contender."""
    return {"TITLE": f"bench lead {i}", "NAME": "Bench", "SOURCE_ID": "WEB"}


# -- fast-bitrix24 ---------------------------------------------------------------------------


def _fast_bitrix24() -> Any:
    import fast_bitrix24

    return fast_bitrix24.Bitrix(WEBHOOK_URL, verbose=False)


def export_fast_bitrix24() -> Iterable[Any]:
    return _fast_bitrix24().get_all(LIST_METHOD)


def write_fast_bitrix24(count: int) -> int:
    items = [{"fields": lead_fields(i)} for i in range(count)]
    return len(_fast_bitrix24().call("crm.lead.add", items))


# -- b24pysdk --------------------------------------------------------------------------------


def _b24pysdk() -> Any:
    from b24pysdk import BitrixWebhook, Client
    from b24pysdk.api.callers.call_method import _MethodCaller

    # The SDK only speaks https; the sandbox only plain HTTP on loopback.
    _MethodCaller._base_url = property(lambda self: f"http://{self._domain}/rest")  # type: ignore[assignment]
    parts = urlsplit(WEBHOOK_URL)
    token = "/".join(parts.path.strip("/").split("/")[1:3])
    return Client(BitrixWebhook(domain=parts.netloc, webhook_token=token))


def export_b24pysdk_as_list() -> Iterable[Any]:
    return _b24pysdk().crm.lead.list().as_list().result


def export_b24pysdk_as_list_fast() -> Iterable[Any]:
    return _b24pysdk().crm.lead.list().as_list_fast().result


def write_b24pysdk_call_batches(count: int) -> int:
    client = _b24pysdk()
    calls = [client.crm.lead.add(fields=lead_fields(i)) for i in range(count)]
    return len(client.call_batches(calls).result.result)


# -- ours, as a library ----------------------------------------------------------------------


def _b24() -> Any:
    from b24agent.rest.client import Bitrix24Client
    from b24agent.settings import load_settings

    return Bitrix24Client(load_settings())


def export_b24_library() -> Iterable[Any]:
    with _b24() as client:
        yield from client.iter_all(LIST_METHOD)


def write_b24_call_many(count: int) -> int:
    calls = (("crm.lead.add", {"fields": lead_fields(i)}) for i in range(count))
    with _b24() as client:
        return sum(outcome.ok for outcome in client.call_many(calls, parallel=PARALLEL))


EXPORTS: dict[str, Callable[[], Iterable[Any]]] = {
    "fast_bitrix24": export_fast_bitrix24,
    "b24pysdk_as_list": export_b24pysdk_as_list,
    "b24pysdk_as_list_fast": export_b24pysdk_as_list_fast,
    "b24_library": export_b24_library,
}
WRITES: dict[str, Callable[[int], int]] = {
    "fast_bitrix24": write_fast_bitrix24,
    "b24pysdk_call_batches": write_b24pysdk_call_batches,
    "b24_call_many": write_b24_call_many,
}


def main(argv: list[str]) -> None:
    job, name = argv[0], argv[1]
    if job == "export":
        rows, ids = 0, set()
        for row in EXPORTS[name]():
            rows += 1
            ids.add(int(row["ID"]))
        print(json.dumps({"rows": rows, "ids": len(ids)}))
    else:
        print(json.dumps({"created": WRITES[name](int(argv[2]))}))


if __name__ == "__main__":
    main(sys.argv[1:])
