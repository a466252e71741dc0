"""Watching a subscription's handler as it runs: how long each step held the event loop, and
what it returned.

A handler runs on the event loop between its awaits; a step that does not return to the loop
(`time.sleep` in an `async def`, a long computation) holds up every request, delivery and
timer of the process. Each step is timed here, and the longest one since the last look is kept
in `HandlerSteps`, so whoever sees the loop stall (service.observability.loop_lag) can name the
handler that held it. A handler's return value is ignored (returning acks the delivery); one
that returns something else than None probably meant something by it, so that is logged once
per subscription.
"""

from __future__ import annotations

import time
import types
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import structlog

from consumers.event import Event, Handler

__all__ = ["HandlerSteps", "LongStep", "WatchedHandler"]

_log = structlog.get_logger(component="consumer")


@dataclass(frozen=True, slots=True)
class LongStep:
    """The longest step a handler ran without giving the loop back, since the last look."""

    subscription: str
    handler: str  # "module:function"
    seconds: float


class HandlerSteps:
    """The longest handler step since `take_longest` was last called, by every handler."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.longest_seconds = 0.0
        self._longest: LongStep | None = None
        self._returned_values: set[str] = set()  # subscriptions whose handler returned a value

    def first_return(self, subscription: str) -> bool:
        """Whether this is the first time the subscription's handler returned a value."""
        if subscription in self._returned_values:
            return False
        self._returned_values.add(subscription)
        return True

    def note(self, subscription: str, handler: str, seconds: float) -> None:
        self.longest_seconds = seconds
        self._longest = LongStep(subscription, handler, seconds)

    def take_longest(self) -> LongStep | None:
        longest, self._longest, self.longest_seconds = self._longest, None, 0.0
        return longest


class WatchedHandler:
    """`handler` as a Handler of its own: each step timed into `steps`, its return value checked."""

    __slots__ = ("_handler", "_steps", "handler_path", "subscription")

    def __init__(
        self, subscription: str, handler_path: str, handler: Handler, steps: HandlerSteps
    ) -> None:
        self.subscription = subscription
        self.handler_path = handler_path
        self._handler = handler
        self._steps = steps

    def __call__(self, event: Event) -> Awaitable[None]:
        return self._run(self._handler(event))

    @types.coroutine
    def _run(self, awaitable: Awaitable[object]) -> Generator[Any, Any, None]:
        steps = self._steps
        clock = steps.clock
        inner = awaitable.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            started = clock()
            try:
                yielded = inner.send(sent) if thrown is None else inner.throw(thrown)
            except StopIteration as returned:
                self._step_took(clock() - started)
                if returned.value is not None:
                    self._returned(returned.value)
                return
            except BaseException:
                self._step_took(clock() - started)
                raise
            self._step_took(clock() - started)
            try:
                sent, thrown = (yield yielded), None
            except GeneratorExit:
                inner.close()
                raise
            except BaseException as error:  # noqa: BLE001 - thrown into the handler, as `await` does
                sent, thrown = None, error

    def _step_took(self, seconds: float) -> None:
        if seconds > self._steps.longest_seconds:
            self._steps.note(self.subscription, self.handler_path, seconds)

    def _returned(self, value: object) -> None:
        if not self._steps.first_return(self.subscription):
            return
        _log.warning(
            "handler returned a value, which conveyor ignores: return None to acknowledge, "
            "raise to fail (logged once per subscription)",
            subscription=self.subscription,
            handler=self.handler_path,
            returned_type=type(value).__name__,
        )
