"""Coalesced reads: lookups from many coroutines go to the store as one query per batch.

The read-side sibling of `BatchWriter`'s group commit. A lookup that finds no query running
starts one on the next turn of the event loop, so lookups made in the same turn share it; those
that arrive while a query runs wait for the next one, which asks for all of them at once. Under
load batches grow by themselves; when idle a lookup goes out alone at once. Each caller gets the
answer for its own key; a query that fails or runs out of time fails every lookup in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from service.cancellation import stop_task

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """Batches `get(key)` calls into `fetch_many(keys)`; keys it does not return get `default`."""

    def __init__(
        self,
        fetch_many: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        default: V,
        max_batch: int,
        timeout: float,
        name: str = "conveyor-store-lookups",
    ) -> None:
        self._fetch_many = fetch_many
        self._default = default
        self._max_batch = max_batch
        self._timeout = timeout
        self._name = name
        # Keys not yet asked for, with their callers; two callers of one key share its answer.
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def get(self, key: K) -> V:
        if self._closed:
            raise RuntimeError("the store is closing")
        # A future per caller, not one per key behind `asyncio.shield` (a second future and
        # two callbacks on every lookup): a caller that gives up (its own timeout)
        # cancels only its own, and the others of the same key still get the answer.
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        waiting = self._pending.get(key)
        if waiting is None:
            self._pending[key] = [answer]
            if self._task is None:
                self._task = asyncio.create_task(self._run(), name=self._name)
        else:
            waiting.append(answer)
        return await answer

    async def close(self) -> None:
        """Stop: lookups still waiting fail (their callers fall back as on any store error)."""
        self._closed = True
        if self._task is not None:
            # Bounded: a store driver that swallowed the cancellation must not hold shutdown.
            await stop_task(self._task, self._timeout)
        self._fail(list(self._pending.items()), RuntimeError("the store is closing"))
        self._pending.clear()

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = list(self._pending.items())[: self._max_batch]
                for key, _ in batch:
                    del self._pending[key]
                try:
                    await self._answer(batch)
                except BaseException:
                    self._fail(batch, RuntimeError("the lookup was cancelled"))
                    raise
        finally:
            self._task = None

    async def _answer(self, batch: list[tuple[K, list[asyncio.Future[V]]]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                found = await self._fetch_many([key for key, _ in batch])
        except Exception as error:  # noqa: BLE001 - handed to each waiter; lookups go on
            self._fail(batch, error)
            return
        default = self._default
        for key, answers in batch:
            value = found.get(key, default)
            for answer in answers:
                if not answer.done():  # a caller that gave up has cancelled its own
                    answer.set_result(value)

    @staticmethod
    def _fail(batch: list[tuple[K, list[asyncio.Future[V]]]], error: BaseException) -> None:
        for _, answers in batch:
            for answer in answers:
                if not answer.done():
                    answer.set_exception(error)
                    # Retrieved here: a waiter that already gave up must not leave asyncio
                    # logging "exception was never retrieved".
                    answer.exception()
