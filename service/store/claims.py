"""Idempotency claims from many coroutines, taken in few statements.

Each request of a batch POST, and each concurrent request, claims its key before publishing; one
statement per claim cost a hand-off to the store's thread (SQLite) or a round trip (PostgreSQL)
each. `ClaimBatcher` is the store as the `Deduplicator` sees it: a claim that finds no batch
running goes out on the next turn of the event loop with whatever else was asked in that turn;
claims made while a batch runs go out together in the next. A batch holds each key once: a second
claim of a key waits for the next batch, so it sees the first claim, exactly as if it came alone.

Given the status writer (for a serial store: SQLite), the claims go out with its turns
(`BatchWriter.carry`): a request's claim and another's answer, asked for in one turn, then share
one operation of the store. Without it, or once it stops, the batcher runs turns of claims alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from service.cancellation import STOP_SECONDS, stop_task
from service.store.base import Claim, ClaimOutcome, ClaimRequest, IdempotencyStore
from service.store.batching import BatchWriter, ClaimTurn
from service.store.faults import StoreUnavailableError, describe

__all__ = ["ClaimBatcher"]

_log = structlog.get_logger(component="store")
MAX_CLAIMS_PER_BATCH = 500

_Entry = tuple[ClaimRequest, asyncio.Future[Claim]]
# Failures of the store, not of a claim: every claim of the batch had them alike.
_PASSING_FAILURES = (StoreUnavailableError, TimeoutError)


class ClaimBatcher:
    """An `IdempotencyStore` whose `claim` calls are batched into the store's `claim_many`."""

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        remember: float,
        max_batch: int = MAX_CLAIMS_PER_BATCH,
        writer: BatchWriter | None = None,
    ) -> None:
        self._store = store
        self._remember = remember  # how long a released key stays known (see `release`)
        self._max_batch = max_batch
        self._queue: list[_Entry] = []  # in arrival order
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._writer = writer
        # Abandoned claims being released; claims of a refused batch being taken alone.
        self._side_tasks: set[asyncio.Task[None]] = set()
        if writer is not None:
            writer.carry(self)

    async def claim(
        self, scope: str, key: str, fingerprint: str, *, owner: str, lease: float
    ) -> Claim:
        if self._closed:
            raise RuntimeError("the store is closing")
        answer: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        self._queue.append((ClaimRequest(scope, key, fingerprint, owner, lease), answer))
        self._send()
        return await answer

    def take(self) -> ClaimTurn | None:
        """The claims to take now, for the status writer's turn (`BatchWriter.carry`)."""
        if self._task is not None:  # a turn of claims alone is under way: it takes them
            return None
        batch = self._next_batch()
        if not batch:
            return None
        requests = [request for request, _ in batch]
        told = False

        def settle(claims: list[Claim] | Exception) -> None:
            nonlocal told
            if not told:  # once: the writer may say "not taken" after a batch went wrong
                told = True
                self._settle(batch, claims)

        return ClaimTurn(requests, settle)

    def _send(self) -> None:
        """Have the queued claims taken: with the writer's next turn, or in a turn alone."""
        if self._task is not None:
            return
        if self._writer is not None and self._writer.wake():
            return
        self._task = asyncio.create_task(self._run(), name="conveyor-store-claims")

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        return await self._store.claim_many(requests)

    async def release(self, scope: str, key: str, owner: str, *, remember: float) -> None:
        await self._store.release(scope, key, owner, remember=remember)

    async def purge_expired(self) -> int:
        return await self._store.purge_expired()

    async def close(self) -> None:
        """Stop batching (claims still queued fail); the store itself is closed by its owner."""
        self._closed = True
        if self._task is not None:
            # Bounded: a store driver that swallowed the cancellation must not hold shutdown.
            await stop_task(self._task, STOP_SECONDS)
        self._fail(self._queue, RuntimeError("the store is closing"))
        self._queue.clear()
        if self._side_tasks:
            await asyncio.wait(set(self._side_tasks), timeout=STOP_SECONDS)

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = self._next_batch()
                try:
                    await self._answer(batch)
                except BaseException:
                    self._fail(batch, RuntimeError("the claim was cancelled"))
                    raise
        finally:
            self._task = None

    def _next_batch(self) -> list[_Entry]:
        """The oldest claims, one per key; a repeated key stays queued, in order, for later."""
        batch: list[_Entry] = []
        keys: set[tuple[str, str]] = set()
        later: list[_Entry] = []
        for entry in self._queue:
            request, answer = entry
            if answer.done():  # its claimer gave up before it went out
                continue
            key = (request.scope, request.key)
            if key in keys or len(batch) == self._max_batch:
                later.append(entry)
            else:
                keys.add(key)
                batch.append(entry)
        self._queue = later
        return batch

    async def _answer(self, batch: list[_Entry]) -> None:
        claims: list[Claim] | Exception
        try:
            claims = await self._store.claim_many([request for request, _ in batch])
        except Exception as error:  # noqa: BLE001 - handed to each claimer; claims go on
            claims = error
        self._settle(batch, claims)
        # An abandoned key is free, and a refused batch's claims taken one by one, before the
        # next claims go out.
        if self._side_tasks:
            await asyncio.wait(set(self._side_tasks))

    def _settle(self, batch: list[_Entry], claims: list[Claim] | Exception) -> None:
        """Tell each claimer of `batch` its claim, or the batch's failure."""
        if isinstance(claims, Exception):
            waiting = [entry for entry in batch if not entry[1].done()]
            if isinstance(claims, _PASSING_FAILURES) or len(waiting) <= 1:
                self._fail(waiting, claims)
            else:
                # A claim the store refuses (a value it cannot hold) fails its own claimer,
                # not everyone whose claims shared its statement: each is asked again alone.
                alone = asyncio.create_task(self._each_alone(waiting))
                self._side_tasks.add(alone)
                alone.add_done_callback(self._side_tasks.discard)
        else:
            for (request, answer), claim in zip(batch, claims, strict=True):
                if not answer.done():
                    answer.set_result(claim)
                elif claim.outcome is ClaimOutcome.OWNER:
                    # Its claimer gave up while the claim was being taken: free the key at
                    # once rather than when the lease runs out.
                    release = asyncio.create_task(self._release(request))
                    self._side_tasks.add(release)
                    release.add_done_callback(self._side_tasks.discard)
        if self._queue and not self._closed:  # a repeated key waits for a turn of its own
            self._send()

    async def _each_alone(self, batch: list[_Entry]) -> None:
        for entry in batch:
            try:
                claims: list[Claim] | Exception = await self._store.claim_many([entry[0]])
            except Exception as error:  # noqa: BLE001 - handed to its claimer
                claims = error
            self._settle([entry], claims)

    async def _release(self, request: ClaimRequest) -> None:
        try:
            await self._store.release(
                request.scope, request.key, request.owner, remember=self._remember
            )
        except Exception as error:  # noqa: BLE001 - the lease frees the key in the end
            _log.warning("could not release an abandoned claim", error=describe(error))

    @staticmethod
    def _fail(batch: list[_Entry], error: BaseException) -> None:
        for _, answer in batch:
            if not answer.done():
                answer.set_exception(error)
                answer.exception()  # retrieved: a claimer that gave up must not log it
