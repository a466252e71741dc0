"""When the store cannot work: one error for it, a bounded wait, and the readiness probe.

A store that is locked by another process, read-only, full, gone or cut off from its server
fails an operation with `StoreUnavailableError`; so does one that does not answer within the
store timeout (CONVEYOR_STORE_TIMEOUT). The ingress answers it with 503 and Retry-After:
nothing was published, so the client's retry loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from consumers.deadlines import SharedTimeout

__all__ = ["StoreCheck", "StoreUnavailableError", "describe", "within"]

_T = TypeVar("_T")


class StoreUnavailableError(Exception):
    """The store cannot take or answer an operation now; trying again later may work."""


def describe(error: BaseException) -> str:
    """An error's message for a log or an answer; never empty (a bare TimeoutError has none)."""
    return str(error) or type(error).__name__


async def within(timeout: SharedTimeout, operation: Awaitable[_T]) -> _T:
    """`operation`, waited for at most `timeout.seconds`: past it, `StoreUnavailableError`.

    Only the wait is bounded: an operation the store runs already finishes (or fails) on its
    own, as the backends shield what they hand to their driver. One shared timer for every
    wait, not a timer each: an ingest request waits on the store twice.
    """
    try:
        async with timeout():
            return await operation
    except TimeoutError:
        raise StoreUnavailableError(
            f"the store did not answer within {timeout.seconds:g} s (CONVEYOR_STORE_TIMEOUT)"
        ) from None


class StoreCheck:
    """The store's part of /readyz: at most one probe at a time, each caller waiting a bounded
    time for it. Probes asked for while one runs share it, so a store that hangs does not
    collect a probe per readiness poll."""

    def __init__(
        self, probe: Callable[[], Coroutine[Any, Any, str | None]], *, timeout: float
    ) -> None:
        self._probe = probe
        self._timeout = timeout
        self._running: asyncio.Task[str | None] | None = None

    async def problem(self) -> str | None:
        """Why the store cannot take writes now; None when it can."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._probe(), name="conveyor-store-probe")
            # Retrieved here too: every caller may have stopped waiting before it failed.
            self._running.add_done_callback(lambda task: task.cancelled() or task.exception())
        running = self._running
        # Waited for, not cancelled, when the time is up: the next caller waits for it again.
        await asyncio.wait({running}, timeout=self._timeout)
        if not running.done():
            return f"no answer within {self._timeout:g} s"
        try:
            return running.result()
        except Exception as error:  # noqa: BLE001 - a probe that fails is the answer
            return describe(error)

    async def close(self) -> None:
        if self._running is not None and not self._running.done():
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)
