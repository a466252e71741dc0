"""Consumers' "did this already succeed?" lookups, coalesced into few queries; both backends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aio_pika
import pytest

from consumers import Event
from consumers.dead_letter import Failure
from consumers.moves import MessageMover
from consumers.reporting import StatusReporter
from consumers.status import DeliveryState, DeliveryUpdate
from service.http.status_book import MAX_LOOKUPS_PER_QUERY, StatusBook
from service.store import BatchWriter, Store, Write, open_store
from tests.conftest import subscription
from tests.support.namespace import Namespace
from tests.support.waiting import eventually


class QueryCountingStore:
    """The real store, counting the queries asked of it (and how many keys each carried)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lookup_sizes: list[int] = []  # keys per lookup query, padding included
        self.hang_next = False  # the next lookup query hangs until cancelled

    async def write(self, writes: Sequence[Write]) -> None:
        await self.store.write(writes)

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        if "WITH wanted" in statement:
            self.lookup_sizes.append((len(params) - 1) // 3)
            if self.hang_next:
                self.hang_next = False
                await asyncio.Event().wait()
        return await self.store.query(statement, *params)


@contextlib.asynccontextmanager
async def open_book(
    store_url: str, *, lookup_timeout: float = 5.0
) -> AsyncIterator[tuple[StatusBook, QueryCountingStore]]:
    store = await open_store(store_url)
    counting = QueryCountingStore(store)
    writer = BatchWriter(store)
    writer.start()
    book = StatusBook(
        counting,  # type: ignore[arg-type]  # only write() and query() are used by the book
        writer,
        ttl=60,
        dedup_window=60,
        subscriptions=(),
        lookup_timeout=lookup_timeout,
    )
    try:
        yield book, counting
    finally:
        await book.close()
        await writer.close()
        await store.close()


def update(event_id: str, subscription_name: str, state: DeliveryState) -> DeliveryUpdate:
    failed = state is not DeliveryState.SUCCEEDED
    return DeliveryUpdate(
        event_id=event_id,
        source="/s",
        subscription=subscription_name,
        state=state,
        attempts=1,
        at=time.time(),
        attributes={"id": event_id, "source": "/s", "type": "t", "specversion": "1.0"},
        failure=Failure("Boom", "went wrong", "") if failed else None,
    )


async def test_concurrent_lookups_each_get_their_own_answer_from_fewer_queries(
    store_url: str,
) -> None:
    async with open_book(store_url) as (book, counting):
        # e-0, e-3, ... succeeded for "sub"; e-1, e-4, ... were dead-lettered there; the rest
        # were never seen. e-0, e-6, ... also succeeded for "other".
        recorded = [update(f"e-{n}", "sub", DeliveryState.SUCCEEDED) for n in range(0, 600, 3)]
        recorded += [update(f"e-{n}", "sub", DeliveryState.DEAD_LETTERED) for n in range(1, 600, 3)]
        recorded += [update(f"e-{n}", "other", DeliveryState.SUCCEEDED) for n in range(0, 600, 6)]
        await asyncio.gather(*(book.record(one) for one in recorded))
        questions = [
            (name, f"e-{number}") for number in range(600) for name in ("sub", "other", "third")
        ]
        questions += questions[:50]  # the same key asked twice at once
        answers = await asyncio.gather(
            *(book.succeeded_before(name, "/s", event_id) for name, event_id in questions)
        )

    expected = [
        (name == "sub" and number % 3 == 0) or (name == "other" and number % 6 == 0)
        for name, number in ((name, int(event_id[2:])) for name, event_id in questions)
    ]
    assert answers == expected
    # 1,800 different keys asked at once: ceil(1800 / 256) = 8 queries, not 1,850.
    assert len(counting.lookup_sizes) == 8
    assert max(counting.lookup_sizes) <= MAX_LOOKUPS_PER_QUERY


async def test_a_lookup_query_that_fails_runs_the_handler_for_every_waiter(
    store_url: str, namespace: Namespace
) -> None:
    broken = await open_store(store_url)
    await broken.close()  # every query now fails, as a store that went away does
    writer = BatchWriter(broken)
    book = StatusBook(broken, writer, ttl=60, dedup_window=60, subscriptions=())
    orders = subscription("orders", ("order.*",), lambda _event: asyncio.sleep(0))
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        reporter = StatusReporter(
            orders,
            ledger=book,
            mover=MessageMover(channel, timeout=5),
            topology=namespace.topology,
        )
        events = [
            Event(id=f"e-{number}", source="/s", type="order.placed", specversion="1.0")
            for number in range(40)
        ]
        direct = await asyncio.gather(
            *(book.succeeded_before("orders", "/s", f"e-{n}") for n in range(40)),
            return_exceptions=True,
        )
        handled = await asyncio.gather(*(reporter.succeeded_before(event) for event in events))
    await book.close()

    # Each waiter got the store's error, and the reporter's policy turned it into "run it".
    assert all(isinstance(answer, Exception) for answer in direct)
    assert handled == [False] * 40


async def test_a_hanging_lookup_query_times_out_for_its_waiters_and_the_next_batch_goes_out(
    store_url: str,
) -> None:
    async with open_book(store_url, lookup_timeout=0.3) as (book, counting):
        await book.record(update("done", "sub", DeliveryState.SUCCEEDED))
        counting.hang_next = True
        stuck = [asyncio.create_task(book.succeeded_before("sub", "/s", "done")) for _ in range(5)]

        async def hanging() -> bool:
            return counting.lookup_sizes == [1]

        await eventually(hanging, what="the first query out and hanging")
        # Asked while it hangs: these wait for the next query, which goes out once it gave up.
        queued = [asyncio.create_task(book.succeeded_before("sub", "/s", "done")) for _ in range(5)]
        results = await asyncio.gather(*stuck, *queued, return_exceptions=True)

    assert all(isinstance(result, TimeoutError) for result in results[:5]), results
    assert results[5:] == [True] * 5
    assert counting.lookup_sizes == [1, 1]


@pytest.mark.parametrize("count", [1, 2, 3, 255, 256, 257, 600])
async def test_batches_of_any_size_reach_the_store(store_url: str, count: int) -> None:
    async with open_book(store_url) as (book, counting):
        await book.record(update(f"e-{count - 1}", "sub", DeliveryState.SUCCEEDED))
        answers = await asyncio.gather(
            *(book.succeeded_before("sub", "/s", f"e-{n}") for n in range(count))
        )
    assert answers == [False] * (count - 1) + [True]
    assert len(counting.lookup_sizes) == -(-count // MAX_LOOKUPS_PER_QUERY)
