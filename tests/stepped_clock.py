"""bench/limiter_worker.py in a process whose wall clock steps forward once, mid-run.

``stepped_clock.py STEP_S AFTER_CALLS GO_FILE ENV_FILE CALLS``: ``time.time()`` jumps STEP_S
seconds ahead once this process has made AFTER_CALLS calls, as a step of the machine's clock
(NTP, a hypervisor, an operator) would; the other arguments are limiter_worker.py's. The clock
is patched before b24agent is imported, so a default bound at import sees the step too.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().parent.parent / "bench" / "limiter_worker.py"


def main() -> None:
    step, after = float(sys.argv[1]), int(sys.argv[2])
    real, offset, made = time.time, [0.0], [0]
    time.time = lambda: real() + offset[0]
    from b24agent.rest.client import Bitrix24Client

    call = Bitrix24Client.call

    def counted(self: Bitrix24Client, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(self, *args, **kwargs)
        finally:
            made[0] += 1
            if made[0] == after:
                offset[0] = step

    Bitrix24Client.call = counted  # type: ignore[method-assign]
    sys.argv = [str(WORKER), *sys.argv[3:]]
    runpy.run_path(str(WORKER), run_name="__main__")


if __name__ == "__main__":
    main()
