"""Group commit: status writes from many coroutines go to the store in few transactions.

One task takes whatever writes queued up while the previous batch was being written and applies
them in one transaction, in the order they were submitted. Under load batches grow by themselves;
when idle a write goes out alone at once. A caller either waits for its write to be stored
(`store`) or only queues it (`submit`), and either way writes apply in submission order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import structlog

from service.cancellation import STOP_SECONDS, stop_task
from service.store.base import Store, Write
from service.store.faults import StoreUnavailableError, describe

__all__ = ["BatchWriter", "WriterClosedError"]

_log = structlog.get_logger(component="store")
MAX_BATCH_WRITES = 500
# A store that stops answering fails the batch instead of holding every writer behind it.
WRITE_TIMEOUT_SECONDS = 30.0
# Queued progress notes beyond this are dropped (a store outage must not grow memory without
# bound); writes someone waits for are never dropped.
MAX_QUEUED_NOTES = 10_000
CLOSE_TIMEOUT_SECONDS = 35.0
# A batch the store could not take now (locked, read-only, full, cut off) is queued again after
# this: its writes only move a status forward, so one that lands late changes nothing newer,
# and a status is not left behind (pending, processing) by an outage it outlived.
RETRY_SECONDS = 1.0
_PASSING_FAILURES = (StoreUnavailableError, TimeoutError)

_Entry = tuple[tuple[Write, ...], asyncio.Future[None] | None]


class WriterClosedError(RuntimeError):
    pass


class BatchWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._notes = 0  # queued entries nobody waits for
        self._closed = False
        # Called after each committed batch with its writes (for waiters on the status API).
        self.on_written: Callable[[Sequence[Write]], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="conveyor-store-writer")

    def submit(self, *writes: Write) -> None:
        """Queue `writes` (applied together) without waiting; a failure is logged."""
        if self._closed:
            return
        if self._notes >= MAX_QUEUED_NOTES:
            _log.warning("status store behind; a progress note was dropped")
            return
        self._notes += 1
        self._queue.put_nowait((writes, None))

    async def store(self, *writes: Write) -> None:
        """Queue `writes` (applied together) and return once they are committed."""
        if self._closed:
            raise WriterClosedError("the store is closing")
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((writes, done))
        await done

    async def close(self) -> None:
        """Write what is queued (for a bounded time), then stop."""
        self._closed = True
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self._queue.join()
        # Bounded: a store driver that swallowed the cancellation must not hold shutdown.
        await stop_task(self._task, STOP_SECONDS)
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH_WRITES and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._notes -= sum(1 for _, done in batch if done is None)
            try:
                await self._write(batch)
            except Exception:  # noqa: BLE001 - the writer must outlive any one batch
                _log.exception("status writer failed on a batch")
            finally:
                for _, done in batch:
                    if done is not None and not done.done():
                        done.set_exception(WriterClosedError("the batch was not written"))
                    self._queue.task_done()

    async def _write(self, batch: list[_Entry]) -> None:
        writes = [write for group, _ in batch for write in group]
        try:
            if writes:
                async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                    await self._store.write(writes)
        except Exception as error:  # noqa: BLE001 - handed to each waiter; the loop goes on
            again = isinstance(error, _PASSING_FAILURES) and not self._closed
            _log.warning(
                "status writes failed",
                writes=len(writes),
                error=describe(error),
                again_in_seconds=RETRY_SECONDS if again else None,
            )
            if again:
                asyncio.get_running_loop().call_later(RETRY_SECONDS, self.submit, *writes)
            for _, done in batch:
                if done is not None and not done.done():
                    done.set_exception(error)
            return
        for _, done in batch:
            if done is not None and not done.done():
                done.set_result(None)
        if self.on_written is not None:
            self.on_written(writes)
