"""`asyncio.timeout(seconds)` for many tasks at once, with one timer among them.

Every delivery runs its handler, and asks the store whether it already succeeded, under a
timeout. `asyncio.timeout` schedules a timer for each and cancels it on the way out, and
cancelled timers pile up in the loop's heap until it rebuilds it. Scopes of one `SharedTimeout`
all last the same `seconds`, so their deadlines come in the order they were entered: one timer,
set for the oldest scope still open, serves them all. A scope that ends takes itself out of the
line; the timer, when it fires, expires what is due and is set again for the next one.

An expired scope behaves as `asyncio.timeout`'s does: its task is cancelled, and the
CancelledError that comes out of the scope becomes a TimeoutError, unless the task was also
cancelled from elsewhere (`Task.uncancel`), which then goes on as a cancellation.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["SharedTimeout"]


class SharedTimeout:
    """`async with shared():` is `async with asyncio.timeout(seconds):`, one timer for all."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        # Open scopes in the order they were entered, which is the order of their deadlines.
        self._open: dict[_Scope, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def __call__(self) -> _Scope:
        return _Scope(self)

    def _enter(self, scope: _Scope, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            # Used on another loop than before (the old one closed with its timer pending):
            # what was open there can no longer expire, and the timer must be set here.
            self._open.clear()
            self._timer, self._loop = None, loop
        self._open[scope] = None
        if self._timer is None:
            self._timer = loop.call_at(scope.deadline, self._expire, loop)

    def _leave(self, scope: _Scope) -> None:
        self._open.pop(scope, None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._open:
            scope = next(iter(self._open))
            if scope.deadline > now:
                self._timer = loop.call_at(scope.deadline, self._expire, loop)
                return
            del self._open[scope]
            scope.expire()


class _Scope:
    __slots__ = ("_cancelling", "_expired", "_owner", "_task", "deadline")

    def __init__(self, owner: SharedTimeout) -> None:
        self._owner = owner
        self._expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a timeout scope must be entered inside a task")
        loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.deadline = loop.time() + self._owner.seconds
        self._owner._enter(self, loop)  # noqa: SLF001 - the scope is the owner's other half

    async def __aexit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._expired:
            self._owner._leave(self)  # noqa: SLF001 - as above
            return
        # As asyncio.timeout: the cancellation was ours unless someone else's came too.
        if self._task.uncancel() <= self._cancelling and error_type is asyncio.CancelledError:
            raise TimeoutError from error

    def expire(self) -> None:
        self._expired = True
        self._task.cancel()
