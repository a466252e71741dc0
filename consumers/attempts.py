"""Running a handler for one delivery: a timeout per attempt, quick retries with jittered backoff.

A plain loop, not tenacity's: its machinery cost a few percent of the consumer's time on every
delivery (issue 7), while nearly every handler returns on its first attempt. The waits are
tenacity's `wait_random_exponential` (uniform between 0 and `base * 2**(n - 1)`, capped), or the
handler's own `retry_after` when it asks for a pause within the in-process cap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from consumers.dead_letter import Failure
from consumers.errors import PermanentError, RetryableError
from consumers.event import Event, Handler
from consumers.retry import (
    IN_PROCESS_BASE_SECONDS,
    IN_PROCESS_MAX_WAIT_SECONDS,
    RetryPolicy,
)

__all__ = ["AttemptsResult", "HandlerTimeoutError", "run_attempts"]

_log = structlog.get_logger(component="consumer")


class HandlerTimeoutError(RetryableError):
    """The handler ran past its subscription's `timeout`."""


class HandlerCancelledError(RetryableError):
    """The handler raised CancelledError without anyone cancelling it."""


@dataclass(frozen=True, slots=True)
class AttemptsResult:
    attempts: int  # handler attempts made in this delivery
    failure: Failure | None = None  # None when the last attempt succeeded
    permanent: bool = False

    @property
    def succeeded(self) -> bool:
        return self.failure is None


def _wait(error: Exception, attempts: int) -> float:
    """The pause after the `attempts`-th attempt of this delivery failed with `error`."""
    if isinstance(error, RetryableError) and error.retry_after is not None:
        return min(error.retry_after, IN_PROCESS_MAX_WAIT_SECONDS)
    high = min(IN_PROCESS_BASE_SECONDS * 2 ** min(attempts - 1, 64), IN_PROCESS_MAX_WAIT_SECONDS)
    return random.uniform(0, high)  # noqa: S311 - jitter, not cryptography


def _worth_retrying_here(error: BaseException) -> bool:
    if not isinstance(error, Exception) or isinstance(error, PermanentError):
        return False
    # A downstream that asks for a longer pause than the in-process cap gets the ladder.
    return not (
        isinstance(error, RetryableError)
        and error.retry_after is not None
        and error.retry_after > IN_PROCESS_MAX_WAIT_SECONDS
    )


async def run_attempts(
    handler: Handler,
    event: Event,
    *,
    policy: RetryPolicy,
    timeout: float,
    keep_trying: Callable[[], bool],
) -> AttemptsResult:
    """Call `handler` until it returns, fails permanently, or in-process attempts run out.

    `event.attempt` is the number of the first attempt here; each retry gets the next number.
    Cancellation propagates (the delivery then returns to the queue unsettled).
    """
    made = 0
    while True:
        current = event if made == 0 else dataclasses.replace(event, attempt=event.attempt + made)
        structlog.contextvars.bind_contextvars(attempt=current.attempt)
        made += 1
        try:
            await _attempt(handler, current, timeout)
        except PermanentError as error:
            return AttemptsResult(made, Failure.from_exception(error), permanent=True)
        except Exception as error:  # noqa: BLE001 - every other failure is a retryable outcome
            if made >= policy.in_process or not _worth_retrying_here(error) or not keep_trying():
                return AttemptsResult(made, Failure.from_exception(error))
            delay = _wait(error, made)
            _log.warning(
                "handler failed; retrying in process",
                attempt_in_delivery=made,
                retry_in=round(delay, 3),
                error_class=type(error).__name__,
                error=str(error)[:500],
            )
            await asyncio.sleep(delay)
        else:
            return AttemptsResult(made)


async def _attempt(handler: Handler, event: Event, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await handler(event)
    except TimeoutError:
        message = f"handler ran past its timeout of {timeout:g}s"
        raise HandlerTimeoutError(message) from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # shutdown or a lost channel: the delivery goes back unsettled
        # The handler raised CancelledError itself: that is its failure.
        raise HandlerCancelledError("the handler raised CancelledError") from None
