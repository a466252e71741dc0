"""One publish per message id in flight on a channel.

aiormq matches a `basic.return` to its publish by `message_id`; with two publishes of one id in
flight, a return can be charged to the wrong one and an unroutable message can look confirmed.
Publishes of distinct ids run in parallel as before; only a repeated id waits its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

__all__ = ["SameIdGate"]


class SameIdGate:
    def __init__(self) -> None:
        # An id is held while it is a key here; its deque holds the turns waiting for it.
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def try_hold(self, message_id: str) -> bool:
        """Take `message_id`'s turn at once if nobody holds it; `release` gives it back."""
        if message_id in self._waiting:
            return False
        self._waiting[message_id] = deque()
        return True

    def release(self, message_id: str) -> None:
        """End the holder's turn: the next waiter (in arrival order) gets it."""
        waiters = self._waiting[message_id]
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        del self._waiting[message_id]

    @contextlib.asynccontextmanager
    async def turn(self, message_id: str | None) -> AsyncIterator[None]:
        if message_id is None:
            yield
            return
        if not self.try_hold(message_id):
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[message_id].append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.release(message_id)  # handed the turn, then cancelled: pass it on
                raise
        try:
            yield
        finally:
            self.release(message_id)
