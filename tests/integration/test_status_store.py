"""Status records in the store: ordering, group commit, migration, expiry; both backends."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from consumers.dead_letter import Failure
from consumers.status import DeliveryState, DeliveryUpdate
from consumers.subscription import Subscription
from producers import new_event
from producers.event import format_timestamp
from service.clock import SYSTEM_CLOCK, Clock
from service.http.status_book import MAX_HISTORY_SHOWN, StatusBook
from service.store import BatchWriter, ClaimOutcome, Statements, Store, Write, open_store
from service.store.sql import MAX_HISTORY_CHARS, MIGRATIONS
from tests.conftest import subscription
from tests.support.clock import ShiftedClock
from tests.support.recorder import Recorder


class CountingStore:
    """The real store, counting the transactions the writer asks of it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.transactions = 0

    async def write(self, writes: Sequence[Write]) -> None:
        self.transactions += 1
        await self.store.write(writes)


@contextlib.asynccontextmanager
async def open_book(
    store_url: str,
    *,
    ttl: float = 60,
    dedup_window: float = 60,
    subscriptions: Sequence[Subscription] = (),
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[tuple[StatusBook, CountingStore]]:
    """A status book over a real store, its writer counting the transactions it asks for;
    both read the time from `clock`."""
    store = await open_store(store_url, clock=clock)
    counting = CountingStore(store)
    writer = BatchWriter(counting)  # type: ignore[arg-type]  # only write() is used by the writer
    writer.start()
    try:
        yield (
            StatusBook(
                store,
                writer,
                ttl=ttl,
                dedup_window=dedup_window,
                subscriptions=subscriptions,
                clock=clock,
            ),
            (counting),
        )
    finally:
        await writer.close()
        await store.close()


@pytest.fixture
async def book(store_url: str) -> AsyncIterator[tuple[StatusBook, CountingStore]]:
    async with open_book(store_url) as opened:
        yield opened


def update(state: DeliveryState, attempts: int, event_id: str = "e-1") -> DeliveryUpdate:
    failure = Failure("Boom", "went wrong", "") if state is DeliveryState.RETRYING else None
    return DeliveryUpdate(
        event_id=event_id,
        source="/s",
        subscription="sub",
        state=state,
        attempts=attempts,
        at=time.time(),
        attributes={"id": event_id, "source": "/s", "type": "t", "specversion": "1.0"},
        next_attempt_at=time.time() + 10 if state is DeliveryState.RETRYING else None,
        failure=failure,
    )


async def state(book: StatusBook, event_id: str = "e-1") -> tuple[str, int]:
    [found] = await book.lookup(event_id)
    entry = found.subscriptions["sub"]
    return entry["state"], entry["attempts"]


async def test_a_late_update_never_rolls_a_status_back(
    book: tuple[StatusBook, CountingStore],
) -> None:
    ledger, _ = book
    await ledger.record(update(DeliveryState.RETRYING, 3))
    # Arriving late from another process: an earlier attempt's states.
    await ledger.record(update(DeliveryState.PROCESSING, 3))
    await ledger.record(update(DeliveryState.PROCESSING, 2))
    assert await state(ledger) == ("retrying", 3)

    await ledger.record(update(DeliveryState.PROCESSING, 4))
    assert await state(ledger) == ("processing", 4)
    await ledger.record(update(DeliveryState.SUCCEEDED, 4))
    await ledger.record(update(DeliveryState.RETRYING, 3))
    assert await state(ledger) == ("succeeded", 4)
    [found] = await ledger.lookup("e-1")
    assert found.subscriptions["sub"]["last_error"] == {"class": "Boom", "message": "went wrong"}
    assert await ledger.succeeded_before("sub", "/s", "e-1")
    assert not await ledger.succeeded_before("other", "/s", "e-1")


async def test_an_accepted_event_is_one_row_and_pending_wherever_it_was_routed(
    store_url: str,
) -> None:
    # The ingress writes the event's row only (issue 7: no `pending` row per subscription);
    # each subscription it was routed to reads as pending, as such a row said, until it reports.
    # Listed out of name order: entries come in name order, as rows did.
    routed = [subscription(name, ("order.*",), Recorder()) for name in ("mail", "billing")]
    async with open_book(store_url, subscriptions=routed) as (book, counting):
        event = new_event("order.placed", {"n": 1}, source="/shop", id="o-1")
        await counting.store.write(book.accepted_writes(event))
        assert await counting.store.query("SELECT count(*) FROM conveyor_deliveries") == [(0,)]

        [accepted] = await book.lookup("o-1")
        assert accepted.accepted_at is not None
        pending = {
            "state": "pending",
            "attempts": 0,
            "first_attempt_at": None,
            "updated_at": format_timestamp(accepted.accepted_at),
            "finished_at": None,
        }
        assert list(accepted.subscriptions.items()) == [("billing", pending), ("mail", pending)]
        assert (accepted.state, accepted.done) == ("pending", False)

        await book.record(
            replace(
                update(DeliveryState.SUCCEEDED, 1, "o-1"),
                source="/shop",
                subscription="mail",
            )
        )
        [later] = await book.lookup("o-1")
        assert list(later.subscriptions) == ["billing", "mail"]
        assert (later.subscriptions["billing"], later.subscriptions["mail"]["state"]) == (
            pending,
            "succeeded",
        )
        assert (later.state, later.done) == ("in-progress", False)
        assert await book.succeeded_before("mail", "/shop", "o-1")


async def test_notes_and_records_apply_in_order_in_few_transactions(
    book: tuple[StatusBook, CountingStore],
) -> None:
    ledger, counting = book
    for index in range(300):
        ledger.note(update(DeliveryState.PROCESSING, 1, f"n-{index}"))
    await asyncio.gather(
        *(ledger.record(update(DeliveryState.SUCCEEDED, 1, f"n-{index}")) for index in range(300))
    )

    states = [await state(ledger, f"n-{index}") for index in range(0, 300, 37)]
    assert set(states) == {("succeeded", 1)}
    assert counting.transactions < 600 / 10  # grouped: far fewer transactions than writes


async def test_expired_statuses_are_purged(store_url: str) -> None:
    clock = ShiftedClock()
    async with open_book(store_url, ttl=60, clock=clock) as (ledger, counting):
        await ledger.record(update(DeliveryState.SUCCEEDED, 1, "old"))
        assert await ledger.lookup("old")
        assert await counting.store.purge_expired() == 0  # not yet expired
        clock.advance(61)
        assert await ledger.lookup("old") == []  # hidden at once
        assert await counting.store.purge_expired() >= 2  # and deleted by the purge


async def test_an_sqlite_file_from_the_first_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # what the previous release created
        old.execute(
            "CREATE TABLE conveyor_idempotency (scope TEXT NOT NULL, key TEXT NOT NULL, "
            "fingerprint TEXT NOT NULL, status INTEGER, body BLOB, "
            "expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, key))"
        )
        old.execute(
            "INSERT INTO conveyor_idempotency VALUES ('request', 'k', 'fp', 202, x'7b7d', ?)",
            (time.time() + 60,),
        )
    store = await open_store(f"sqlite:///{path}")
    try:
        replay = await store.claim("request", "k", "fp", owner="new", lease=60)
        assert (replay.outcome, replay.body) == (ClaimOutcome.REPLAY, b"{}")
        assert await store.query("SELECT version FROM conveyor_schema") == [(len(MIGRATIONS),)]
        assert await store.query("SELECT count(*) FROM conveyor_deliveries") == [(0,)]
    finally:
        await store.close()


async def test_processes_starting_together_on_postgresql_migrate_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(4)))
    try:
        assert await stores[0].query("SELECT version FROM conveyor_schema") == [(len(MIGRATIONS),)]
    finally:
        for store in stores:
            await store.close()
    schema = postgres_url.rsplit("search_path=", 1)[1]
    connection = await asyncpg.connect(postgres_url.split("?", maxsplit=1)[0])
    try:
        tables = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    finally:
        await connection.close()
    assert sorted(row["table_name"] for row in tables) == [
        "conveyor_deliveries",
        "conveyor_events",
        "conveyor_idempotency",
        "conveyor_schedule_ticks",
        "conveyor_schema",
    ]


async def test_a_success_counts_for_dedup_only_within_the_window(store_url: str) -> None:
    clock = ShiftedClock()
    async with open_book(store_url, dedup_window=60, clock=clock) as (ledger, _):
        await ledger.record(update(DeliveryState.SUCCEEDED, 1, "w-1"))
        assert await ledger.succeeded_before("sub", "/s", "w-1")
        clock.advance(61)  # past the idempotency TTL the same id may be a new event
        assert not await ledger.succeeded_before("sub", "/s", "w-1")


async def test_a_replay_from_the_dlq_starts_the_status_over(
    book: tuple[StatusBook, CountingStore],
) -> None:
    ledger, _ = book
    await ledger.record(update(DeliveryState.DEAD_LETTERED, 15))
    await ledger.record(replace(update(DeliveryState.PROCESSING, 1), replays=1))
    assert await state(ledger) == ("processing", 1)
    await ledger.record(replace(update(DeliveryState.SUCCEEDED, 1), replays=1))
    assert await state(ledger) == ("succeeded", 1)
    await ledger.record(update(DeliveryState.RETRYING, 14))  # late, from before the replay
    assert await state(ledger) == ("succeeded", 1)


async def test_each_replay_ends_a_round_kept_in_history_and_the_new_one_starts_clean(
    book: tuple[StatusBook, CountingStore],
) -> None:
    ledger, _ = book
    boom = Failure("Boom", "went wrong", "")
    dead = replace(update(DeliveryState.DEAD_LETTERED, 3), failure=boom, reason="retries-exhausted")
    await ledger.record(dead)
    await ledger.record(replace(update(DeliveryState.PROCESSING, 1), replays=1))
    [found] = await ledger.lookup("e-1")
    entry = found.subscriptions["sub"]
    assert (entry["state"], "last_error" in entry) == ("processing", False)
    await ledger.record(replace(dead, replays=1, at=dead.at + 1, reason="permanent-error"))
    await ledger.record(replace(update(DeliveryState.SUCCEEDED, 2), replays=2))
    # Late, from before the replays: neither changes the current round nor adds to history.
    await ledger.record(update(DeliveryState.RETRYING, 2))
    await ledger.record(replace(update(DeliveryState.PROCESSING, 1), replays=1))

    [found] = await ledger.lookup("e-1")
    entry = found.subscriptions["sub"]
    assert (entry["state"], entry["attempts"], "last_error" in entry) == ("succeeded", 2, False)
    history = entry["history"]
    # Times are kept in whole microseconds: the same instant, to the microsecond.
    times = [datetime.fromisoformat(earlier.pop("at")).timestamp() for earlier in history]
    assert [round(moment - dead.at, 5) for moment in times] == [0, 1]
    error = {"class": "Boom", "message": "went wrong"}
    assert history == [
        {
            "state": "dead-lettered",
            "attempts": 3,
            "reason": "retries-exhausted",
            "last_error": error | {"reason": "retries-exhausted"},
        },
        {
            "state": "dead-lettered",
            "attempts": 3,
            "reason": "permanent-error",
            "last_error": error | {"reason": "permanent-error"},
        },
    ]


async def test_the_history_of_many_replays_stays_bounded(
    book: tuple[StatusBook, CountingStore],
) -> None:
    ledger, counting = book
    longest = Failure("Boom", "x" * 1000, "")  # as long as a DLQ entry keeps a message
    for replays in range(80):
        dead = update(DeliveryState.DEAD_LETTERED, 1)
        await ledger.record(replace(dead, replays=replays, failure=longest, reason="malformed"))

    [found] = await ledger.lookup("e-1")
    assert len(found.subscriptions["sub"]["history"]) == MAX_HISTORY_SHOWN
    [(stored,)] = await counting.store.query("SELECT length(history) FROM conveyor_deliveries")
    assert stored <= MAX_HISTORY_CHARS + 2000  # 79 rounds would take about 85,000


async def test_a_batch_cut_short_by_a_timeout_leaves_sqlite_usable(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = await open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        writes = [(Statements.see_event, ("t-1", "/s", "{}", time.time() + 60))]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await store.write(writes)
        other.execute("COMMIT")

        await store.write([(Statements.see_event, ("t-2", "/s", "{}", time.time() + 60))])
        assert await claim_outcome(store) is ClaimOutcome.OWNER
        seen = other.execute("SELECT event_id FROM conveyor_events ORDER BY event_id").fetchall()
        assert seen == [("t-1",), ("t-2",)]  # the first batch finished once the lock was free
        assert other.execute("SELECT count(*) FROM conveyor_idempotency").fetchone() == (1,)
    finally:
        other.close()
        await store.close()


async def claim_outcome(store: Store) -> ClaimOutcome:
    return (await store.claim("request", "k", "fp", owner="o", lease=60)).outcome


async def test_sqlite_reads_go_on_while_another_process_writes_and_cannot_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "reads.db"
    store = await open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await store.write([(Statements.see_event, ("r-1", "/s", "{}", time.time() + 60))])
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        other.execute(Statements.see_event, ("r-2", "/s", "{}", time.time() + 60))
        async with asyncio.timeout(1.0):  # a reader does not wait for the writer (WAL)
            rows = await store.query(Statements.select_events, "r-1", time.time())
            uncommitted = await store.query(Statements.select_events, "r-2", time.time())
        assert [row[:3] for row in rows] == [("r-1", "/s", "{}")]
        assert uncommitted == []  # committed rows only
        other.execute("COMMIT")
        assert len(await store.query(Statements.select_events, "r-2", time.time())) == 1
        # Queries run over a read-only connection: a statement that writes is refused.
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await store.query("DELETE FROM conveyor_events")
        assert other.execute("SELECT count(*) FROM conveyor_events").fetchone() == (2,)
    finally:
        other.close()
        await store.close()
