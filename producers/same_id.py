"""One publish per message id in flight on a channel.

aiormq matches a `basic.return` to its publish by `message_id`; with two publishes of one id in
flight, a return can be charged to the wrong one and an unroutable message can look confirmed.
Publishes of distinct ids run in parallel as before; only a repeated id waits its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["SameIdGate"]


class SameIdGate:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def turn(self, message_id: str | None) -> AsyncIterator[None]:
        if message_id is None:
            yield
            return
        lock = self._locks.setdefault(message_id, asyncio.Lock())
        self._holders[message_id] = self._holders.get(message_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._holders[message_id] -= 1
            if not self._holders[message_id]:
                del self._holders[message_id]
                del self._locks[message_id]
