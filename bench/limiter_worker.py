"""One OS process making N reads as fast as its shared limiter allows.

Run by bench/bench_shared_limiter.py and tests/test_limiter.py so the measured figures and the
tested behaviour come from the same load: ``limiter_worker.py GO_FILE ENV_FILE CALLS`` waits for
GO_FILE to appear (so all processes start together), then prints one JSON line: failed calls,
QUERY_LIMIT_EXCEEDED refusals among them, HTTP requests sent and the finish time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from b24agent.errors import B24Error
from b24agent.rest.client import Bitrix24Client
from b24agent.settings import load_settings


def main() -> None:
    go, env_file, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
    failed = refused = 0
    with Bitrix24Client(load_settings(env_file=env_file)) as client:
        for _ in range(calls):
            try:
                client.call("user.current")
            except B24Error as exc:
                failed += 1
                refused += exc.code == "QUERY_LIMIT_EXCEEDED"
        sent = client.requests_sent
    report = {"failed": failed, "refused": refused, "sent": sent, "finished": time.time()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
