"""Group commit: status writes from many coroutines go to the store in few transactions.

One task takes whatever writes queued up while the previous batch was being written and applies
them in one transaction, in the order they were submitted. Under load batches grow by themselves;
when idle a write goes out alone at once. A caller either waits for its write to be stored
(`store`) or only queues it (`submit`), and either way writes apply in submission order.

Idempotency claims ride along (`carry`): the claims asked for since the last turn go to the store
in the same operation as the writes (`Store.claim_and_write`), so concurrent requests, each with
a claim to take and then an answer to store, share one operation a turn instead of two. Each part
succeeds or fails on its own, and each caller hears only about its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from service.cancellation import STOP_SECONDS, stop_task
from service.store.base import Claim, ClaimRequest, Store, Write
from service.store.faults import StoreUnavailableError, describe

__all__ = ["BatchWriter", "ClaimQueue", "ClaimTurn", "WriterClosedError"]

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
# Queued by `wake`: claims wait, and the writer takes them with whatever writes are queued.
_WAKE: _Entry = ((), None)


@dataclass(frozen=True, slots=True)
class ClaimTurn:
    """Claims taken together: their requests (keys distinct), and whom to tell the outcome."""

    requests: Sequence[ClaimRequest]
    settle: Callable[[list[Claim] | Exception], None]


class ClaimQueue(Protocol):
    def take(self) -> ClaimTurn | None:
        """The claims to take now, if any wait."""
        ...


class WriterClosedError(RuntimeError):
    pass


class BatchWriter:
    def __init__(self, store: Store, *, queue_ahead: bool = False) -> None:
        """`queue_ahead`: for a store that runs its operations one at a time, in the order asked
        (SQLite's thread), the next batch is handed to it while one runs, so that it never
        idles between them; the order in which they apply stays the order they were asked."""
        self._store = store
        self._in_flight = 2 if queue_ahead else 1
        self._running: collections.deque[asyncio.Task[None]] = collections.deque()
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._notes = 0  # queued entries nobody waits for
        self._closed = False
        # Called after each committed batch with its writes (for waiters on the status API).
        self.on_written: Callable[[Sequence[Write]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._claims: ClaimQueue | None = None
        self._woken = False  # a `_WAKE` is queued

    def carry(self, claims: ClaimQueue) -> None:
        """Take `claims`' waiting claims in each turn, with the writes (see `wake`)."""
        self._claims = claims

    def wake(self) -> bool:
        """Claims wait: take them in the next turn. False when the writer no longer runs turns
        (closing, or not started): the claims must go on their own."""
        if self._closed or self._task is None or self._claims is None:
            return False
        if not self._woken:
            self._woken = True
            self._queue.put_nowait(_WAKE)
        return True

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
        for running in self._running:
            await stop_task(running, STOP_SECONDS)
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # One turn of the loop for the rest of it: coroutines woken with this entry (the
            # claimers the last turn answered, now storing their answers) ask in it too.
            await asyncio.sleep(0)
            while len(batch) < MAX_BATCH_WRITES and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            entries = [entry for entry in batch if entry is not _WAKE]
            if len(entries) != len(batch):
                self._woken = False
            self._notes -= sum(1 for _, done in entries if done is None)
            claims = self._claims.take() if self._claims is not None else None
            if self._in_flight == 1:
                await self._write_batch(batch, entries, claims)
                continue
            # Created in order, each task hands its operation to the store on its first step,
            # so the store gets them in this order.
            self._running.append(
                asyncio.create_task(
                    self._write_batch(batch, entries, claims), name="conveyor-store-batch"
                )
            )
            while len(self._running) >= self._in_flight:
                await asyncio.wait({self._running[0]})
                while self._running and self._running[0].done():
                    del self._running[0]

    async def _write_batch(
        self, batch: list[_Entry], entries: list[_Entry], claims: ClaimTurn | None
    ) -> None:
        try:
            await self._write(entries, claims)
        except Exception:  # noqa: BLE001 - the writer must outlive any one batch
            _log.exception("status writer failed on a batch")
        finally:
            if claims is not None:  # told already unless the batch failed unexpectedly
                claims.settle(WriterClosedError("the claims were not taken"))
            for _, done in entries:
                if done is not None and not done.done():
                    done.set_exception(WriterClosedError("the batch was not written"))
            for _ in batch:
                self._queue.task_done()

    async def _write(self, batch: list[_Entry], claims: ClaimTurn | None) -> None:
        writes = [write for group, _ in batch for write in group]
        error = await self._apply(writes) if claims is None else await self._take(claims, writes)
        refused = error is not None and not isinstance(error, _PASSING_FAILURES)
        if refused and sum(1 for group, _ in batch if group) > 1:
            # A write the store refuses (a value it cannot hold) fails its own caller, not
            # everyone whose writes shared its transaction.
            await self._each_alone(batch)
            return
        if error is not None:
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
        if self.on_written is not None and writes:
            self.on_written(writes)

    async def _each_alone(self, batch: list[_Entry]) -> None:
        """Each entry's writes in a transaction of their own, in order."""
        written: list[Write] = []
        for group, done in batch:
            error = await self._apply(list(group))
            if error is not None:
                _log.warning("status writes failed", writes=len(group), error=describe(error))
            else:
                written += group
            if done is not None and not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
        if self.on_written is not None and written:
            self.on_written(written)

    async def _apply(self, writes: list[Write]) -> Exception | None:
        """The writes alone: why they failed, or None."""
        try:
            if writes:
                async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                    await self._store.write(writes)
        except Exception as error:  # noqa: BLE001 - handed to each waiter; the loop goes on
            return error
        return None

    async def _take(self, claims: ClaimTurn, writes: list[Write]) -> Exception | None:
        """The claims and the writes in one operation: the claimers told, and why the writes
        failed, or None."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                outcome = await self._store.claim_and_write(claims.requests, writes)
        except Exception as error:  # noqa: BLE001 - handed to each claimer and waiter
            claims.settle(error)
            return error if writes else None
        claims.settle(outcome.claims)
        return outcome.write_error
