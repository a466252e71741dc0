"""Running a handler for one delivery: a timeout per attempt, quick retries with tenacity.

The first attempt runs on its own: nearly every handler returns on it, and tenacity's machinery
is not worth setting up for each delivery. Only a failed first attempt starts tenacity, which is
handed that failure as its own first attempt, so the stop, wait and retry rules and the retry log
are tenacity's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from consumers.dead_letter import Failure
from consumers.deadlines import SharedTimeout
from consumers.errors import PermanentError, RetryableError
from consumers.event import Event, Handler
from consumers.retry import (
    IN_PROCESS_BASE_SECONDS,
    IN_PROCESS_MAX_WAIT_SECONDS,
    RetryPolicy,
)

__all__ = [
    "AttemptsResult",
    "HandlerCancelledError",
    "HandlerTimeoutError",
    "run_attempts",
    "timed_out",
]

_log = structlog.get_logger(component="consumer")
_exponential = wait_random_exponential(
    multiplier=IN_PROCESS_BASE_SECONDS, max=IN_PROCESS_MAX_WAIT_SECONDS
)


class HandlerTimeoutError(RetryableError):
    """The handler ran past its subscription's `timeout`."""


class HandlerCancelledError(RetryableError):
    """The handler raised CancelledError without anyone cancelling it."""


def timed_out(seconds: float) -> HandlerTimeoutError:
    """The failure of an attempt that ran past a timeout of `seconds`."""
    return HandlerTimeoutError(f"handler ran past its timeout of {seconds:g}s")


@dataclass(slots=True)  # not frozen: one per delivery (see DeliveryUpdate); treat as immutable
class AttemptsResult:
    attempts: int  # handler attempts made in this delivery
    failure: Failure | None = None  # None when the last attempt succeeded
    permanent: bool = False

    @property
    def succeeded(self) -> bool:
        return self.failure is None


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, RetryableError) and error.retry_after is not None:
        return min(error.retry_after, IN_PROCESS_MAX_WAIT_SECONDS)
    return _exponential(state)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    _log.warning(
        "handler failed; retrying in process",
        attempt_in_delivery=state.attempt_number,
        retry_in=round(state.upcoming_sleep, 3),
        error_class=type(error).__name__,
        error=str(error)[:500],
    )


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
    timeout: SharedTimeout,
    keep_trying: Callable[[], bool],
    pace: Callable[[], Awaitable[bool]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AttemptsResult:
    """Call `handler` until it returns, fails permanently, or in-process attempts run out.

    `event.attempt` is the number of the first attempt here; each retry gets the next number.
    `pace()` is awaited before each retry, outside its timeout (a rate limit's token; the
    caller paced the first attempt); False ends the retries with the last failure. `sleep`
    waits between attempts (a virtual clock's in consumers.testing).
    Cancellation propagates (the delivery then returns to the queue unsettled).
    """
    structlog.contextvars.bind_contextvars(attempt=event.attempt)
    try:
        await _attempt(handler, event, timeout)
    except Exception as error:  # noqa: BLE001 - tenacity below decides what the failure means
        first_failure: Exception | None = error
        last_failure: Exception = error
    else:
        return AttemptsResult(1)
    made = 1

    async def next_attempt() -> None:
        nonlocal first_failure, made, last_failure
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure  # the first attempt's outcome, as tenacity's attempt 1
        if pace is not None and not await pace():
            raise last_failure  # a shutdown came during the wait: no attempt, nothing retried
        current = dataclasses.replace(event, attempt=event.attempt + made)
        structlog.contextvars.bind_contextvars(attempt=current.attempt)
        made += 1
        try:
            await _attempt(handler, current, timeout)
        except Exception as failure:
            last_failure = failure
            raise

    retrying = AsyncRetrying(
        sleep=sleep,
        stop=stop_after_attempt(policy.in_process),
        wait=_wait,
        before_sleep=_log_retry,
        retry=retry_if_exception(lambda error: _worth_retrying_here(error) and keep_trying()),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await next_attempt()
    except PermanentError as error:
        return AttemptsResult(made, Failure.from_exception(error), permanent=True)
    except Exception as error:  # noqa: BLE001 - every other failure is a retryable outcome
        return AttemptsResult(made, Failure.from_exception(error))
    return AttemptsResult(made)


async def _attempt(handler: Handler, event: Event, timeout: SharedTimeout) -> None:
    try:
        async with timeout():
            await handler(event)
    except TimeoutError:
        raise timed_out(timeout.seconds) from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # shutdown or a lost channel: the delivery goes back unsettled
        # The handler raised CancelledError itself: that is its failure.
        raise HandlerCancelledError("the handler raised CancelledError") from None
