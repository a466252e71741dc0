"""Handlers for tests: they record what reached them and can be told to fail or wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from consumers import Event, PermanentError


class Recorder:
    """A handler that keeps every event it saw, in order."""

    def __init__(self, *, fail: Callable[[Event], bool] | None = None) -> None:
        self.events: list[Event] = []
        self._fail = fail
        self._changed = asyncio.Condition()
        self.release = asyncio.Event()
        self.release.set()
        self.started = 0

    async def __call__(self, event: Event) -> None:
        self.started += 1
        await self.release.wait()
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        if self._fail is not None and self._fail(event):
            raise RuntimeError(f"told to fail on {event.id}")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Event]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.events) >= count)
        return self.events

    def ids(self) -> list[str]:
        return [event.id for event in self.events]


class Gate:
    """Refuses every event (permanently, so it is dead-lettered at once) until opened; then
    records what it handles."""

    def __init__(self) -> None:
        self.open = False
        self.handled = Recorder()

    async def __call__(self, event: Event) -> None:
        if not self.open:
            raise PermanentError(f"{event.type} refused: gate closed")
        await self.handled(event)
