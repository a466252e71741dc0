"""Group commit: status writes from many coroutines go to the store in few transactions.

One task takes whatever writes queued up while the previous batch was being written and applies
them in one transaction, in the order they were submitted. Under load batches grow by themselves;
when idle a write goes out alone at once. A caller either waits for its write to be stored
(`store`) or only queues it (`submit`), and either way writes apply in submission order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from service.store.base import Store, Write

__all__ = ["BatchWriter"]

_log = structlog.get_logger(component="store")
MAX_BATCH_WRITES = 500
# A store that stops answering fails the batch instead of holding every writer behind it.
WRITE_TIMEOUT_SECONDS = 30.0


class BatchWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: asyncio.Queue[tuple[tuple[Write, ...], asyncio.Future[None] | None]] = (
            asyncio.Queue()
        )
        self.on_written: Callable[[], None] | None = None  # called after each committed batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="conveyor-store-writer")

    def submit(self, *writes: Write) -> None:
        """Queue `writes` (applied together) without waiting; a failure is logged."""
        self._queue.put_nowait((writes, None))

    async def store(self, *writes: Write) -> None:
        """Queue `writes` (applied together) and return once they are committed."""
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((writes, done))
        await done

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(((), None))  # wakes the loop; an empty group is a no-op
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH_WRITES and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(
        self, batch: list[tuple[tuple[Write, ...], asyncio.Future[None] | None]]
    ) -> None:
        writes = [write for group, _ in batch for write in group]
        try:
            if writes:
                async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                    await self._store.write(writes)
        except Exception as error:  # noqa: BLE001 - handed to each waiter; the loop goes on
            _log.warning("status writes failed", writes=len(writes), error=str(error))
            for _, done in batch:
                if done is not None and not done.done():
                    done.set_exception(error)
            return
        for _, done in batch:
            if done is not None and not done.done():
                done.set_result(None)
        if self.on_written is not None:
            self.on_written()
