"""The one place that decides whether a call is sent again, and when (stripe-python style).

Rules:
* Resend only what the error marks ``retryable``. errors.py sets that from what the failure
  proves: refused before running (QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT, connection refused)
  is retryable for reads and writes alike; a server fault, timeout or malformed answer is
  retryable for reads but, for a write, is OutcomeUnknownError, which is never resent here: only
  the caller, with an idempotency record, can reconcile it.
* ``expired_token`` is not counted as a failure: the credential source refreshes once
  (single-flight across processes) and the call is repeated at once. A second expiry right after a
  successful refresh is an AuthError, not a loop.
* A shared state store (Redis) out of reach is not resent: it failed before the portal was
  asked, and each attempt would wait out the store's socket time-out again.
* Waits are jittered exponential backoff. The rate limiter paces the resend of a
  QUERY_LIMIT_EXCEEDED or OPERATION_TIME_LIMIT call itself (its bucket is full / the method is
  held until ``operating_reset_at``), so those only add a short jitter here.
* The v3 ``Idempotency-Key`` does not make a timed-out write safe to resend at once: the portal
  stores an answer only after the first request finishes, and two requests with one key in
  flight may both run (rest-v3.md). Resending with the same key later is the caller's decision.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ..errors import (
    AuthError,
    B24Error,
    OperationTimeLimitError,
    RateLimitError,
    StoreUnavailableError,
    TokenExpiredError,
)
from ..settings import Settings

__all__ = ["RetryPolicy"]

T = TypeVar("T")

#: Jitter added before resending a call the limiter already paces.
PACED_JITTER_S = 0.05


class RetryPolicy:
    """Runs one logical call: attempts, token refresh, backoff, and when to give up."""

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.max_retries = settings.max_retries
        self.base_s = settings.retry_base_s
        self.max_s = settings.retry_max_s
        self.max_operating_wait_s = settings.max_operating_wait_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = time.time

    def may_resend(self, error: BaseException) -> bool:
        """Whether a failed attempt may be sent again now (see the module rules)."""
        if not isinstance(error, B24Error) or not error.retryable:
            return False
        if isinstance(error, StoreUnavailableError):
            return False  # the shared state store, not the portal: its own time-outs apply
        if isinstance(error, OperationTimeLimitError):
            # Held for longer than we wait: retryable later, but not by this run.
            reset_at = error.details.get("operating_reset_at")
            if isinstance(reset_at, (int, float)):
                return reset_at - self._clock() <= self.max_operating_wait_s
        return True

    def wait_s(self, error: BaseException | None, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if isinstance(error, (RateLimitError, OperationTimeLimitError)):
            return self._rng.uniform(0, PACED_JITTER_S)
        # "Full jitter": uniform in [0, min(cap, base * 2^(n-1))], so N clients spread out.
        return self._rng.uniform(0, min(self.max_s, self.base_s * 2 ** (attempt - 1)))

    def again(self, error: BaseException, attempt: int) -> bool:
        """For a read the caller resends itself (one page command of an export's batch):
        whether failed attempt number ``attempt`` may be sent again; if so, after the wait."""
        if attempt > self.max_retries or not self.may_resend(error):
            return False
        self._sleep(self.wait_s(error, attempt))
        return True

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return self.wait_s(error, state.attempt_number)

    def run(self, attempt: Callable[[], T], refresh: Callable[[], None]) -> T:
        """Call ``attempt`` until it succeeds or the rules say stop; re-raise the last error.

        ``refresh`` renews the credential after ``expired_token``; ``attempt`` must take the
        current credential each time it runs.
        """
        refreshed = False

        def once() -> T:
            nonlocal refreshed
            try:
                return attempt()
            except TokenExpiredError:
                if refreshed:
                    raise AuthError(
                        "the portal reports the freshly refreshed access token as expired",
                        code="expired_token",
                        hint="check that B24_OAUTH_SERVER and B24_DOMAIN belong together and "
                        "that this machine's clock is right",
                    ) from None
                refresh()
                refreshed = True
                return attempt()

        retrying = Retrying(
            retry=retry_if_exception(self.may_resend),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(once)
