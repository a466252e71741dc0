"""The store's idempotency claims, against SQLite and the real PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.clock import SYSTEM_CLOCK, Clock
from service.store import ClaimOutcome, Statements, Store, Write, open_store, postgres
from service.store.sqlite import PURGE_CHUNK_ROWS
from tests.support.clock import ShiftedClock


def unique() -> str:
    return f"test-{uuid.uuid4().hex}"


async def claim(
    store: Store,
    scope: str,
    key: str,
    fingerprint: str = "fp",
    *,
    owner: str = "a",
    lease: float = 60,
) -> ClaimOutcome:
    return (await store.claim(scope, key, fingerprint, owner=owner, lease=lease)).outcome


async def complete(
    store: Store,
    scope: str,
    key: str,
    body: bytes,
    *,
    owner: str = "a",
    ttl: float = 60,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Store the owner's answer as the Deduplicator does (through a status batch)."""
    answer = (202, body, clock.now() + ttl, scope, key, owner)
    await store.write([(Statements.complete, answer)])


@pytest.fixture
async def clocked(store_url: str) -> AsyncIterator[tuple[Store, ShiftedClock]]:
    """A store on each backend whose clock the test moves past expiries and leases."""
    clock = ShiftedClock()
    opened = await open_store(store_url, clock=clock)
    yield opened, clock
    await opened.close()


async def test_the_first_claim_owns_the_key_and_a_repeat_replays_its_answer(
    store: Store,
) -> None:
    scope, key = unique(), "k"
    assert await claim(store, scope, key) is ClaimOutcome.OWNER
    assert await claim(store, scope, key, owner="b") is ClaimOutcome.IN_PROGRESS
    await complete(store, scope, key, b'{"id":"1"}')

    replay = await store.claim(scope, key, "fp", owner="c", lease=60)
    assert (replay.outcome, replay.status, replay.body) == (ClaimOutcome.REPLAY, 202, b'{"id":"1"}')
    assert await claim(store, scope, key, "other", owner="d") is ClaimOutcome.CONFLICT


async def test_concurrent_claims_have_exactly_one_owner(store: Store) -> None:
    scope = unique()
    outcomes = await asyncio.gather(
        *(claim(store, scope, "same", owner=str(index)) for index in range(20))
    )
    assert outcomes.count(ClaimOutcome.OWNER) == 1


async def test_a_released_claim_can_be_claimed_again(store: Store) -> None:
    scope = unique()
    assert await claim(store, scope, "k") is ClaimOutcome.OWNER
    await store.release(scope, "k", "a", remember=60)
    assert await claim(store, scope, "k", owner="b") is ClaimOutcome.OWNER


async def test_an_expired_answer_is_forgotten(clocked: tuple[Store, ShiftedClock]) -> None:
    store, clock = clocked
    scope = unique()
    assert await claim(store, scope, "k") is ClaimOutcome.OWNER
    await complete(store, scope, "k", b"{}", ttl=60, clock=clock)
    clock.advance(50)
    assert await claim(store, scope, "k", "different", owner="b") is ClaimOutcome.CONFLICT
    clock.advance(11)
    assert await claim(store, scope, "k", "different", owner="b") is ClaimOutcome.OWNER


async def test_an_owner_that_never_answered_frees_the_key_when_its_lease_ends(
    clocked: tuple[Store, ShiftedClock],
) -> None:
    store, clock = clocked
    scope = unique()
    assert await claim(store, scope, "k", lease=60) is ClaimOutcome.OWNER
    assert await claim(store, scope, "k", owner="b") is ClaimOutcome.IN_PROGRESS
    clock.advance(61)  # the owner stalled or died mid-request: no answer, no release
    assert await claim(store, scope, "k", owner="b") is ClaimOutcome.OWNER

    # The stale owner wakes up: its answer and its release are void, the new owner's stand.
    await complete(store, scope, "k", b'{"id":"stale"}', owner="a", clock=clock)
    await store.release(scope, "k", "a", remember=60)
    assert await claim(store, scope, "k", owner="c") is ClaimOutcome.IN_PROGRESS
    await complete(store, scope, "k", b'{"id":"new"}', owner="b", clock=clock)
    replay = await store.claim(scope, "k", "fp", owner="d", lease=60)
    assert (replay.outcome, replay.body) == (ClaimOutcome.REPLAY, b'{"id":"new"}')
    assert await store.purge_expired() == 0  # nothing here has expired


async def _expired_and_live_rows(store: Store, expired: int) -> None:
    """`expired` events' rows in each expiring table, long expired, and one live event's."""
    past, future = time.time() - 60, time.time() + 3600
    writes: list[Write] = []
    for index, expires_at in [*((i, past) for i in range(expired)), (-1, future)]:
        writes += [
            (Statements.insert_claim, ("purge", f"k{index}", "fp", "a", expires_at, 0.0)),
            (Statements.see_event, (f"e{index}", "test-source", "{}", expires_at)),
            (
                Statements.put_delivery,
                (
                    f"e{index}",
                    "test-source",
                    "s",
                    "succeeded",
                    3,
                    0,
                    1,
                    None,
                    None,
                    past,
                    past,
                    past,
                    expires_at,
                ),
            ),
        ]
    await store.write(writes)


async def test_the_purge_deletes_every_expired_row_and_keeps_the_live_ones(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "PURGE_CHUNK_ROWS", PURGE_CHUNK_ROWS)  # chunks there too
    await _expired_and_live_rows(store, PURGE_CHUNK_ROWS * 2 + 7)  # several chunks

    assert await store.purge_expired() == 3 * (PURGE_CHUNK_ROWS * 2 + 7)
    live = await store.claim("purge", "k-1", "fp", owner="b", lease=60)
    assert live.outcome is ClaimOutcome.IN_PROGRESS  # the live claim is still there
    assert await store.query(Statements.select_events, "e-1", time.time())
    assert await store.query(Statements.select_deliveries, "e-1", "test-source", time.time())
    assert await store.query(Statements.select_events, "e0", 0.0) == []
    assert await store.purge_expired() == 0


async def test_a_claim_asked_during_a_purge_is_not_held_until_the_purge_ends(
    tmp_path: Path,
) -> None:
    """SQLite's one writing thread runs the purge a chunk at a time: a claim queued meanwhile
    goes between two chunks, instead of after every expired row of every table is deleted."""
    store = await open_store(f"sqlite:///{tmp_path}/purge.db")
    try:
        await _expired_and_live_rows(store, PURGE_CHUNK_ROWS * 4)
        purge = asyncio.create_task(store.purge_expired())
        await asyncio.sleep(0)  # the purge hands its first chunk to the thread

        assert await claim(store, unique(), "k") is ClaimOutcome.OWNER
        assert not purge.done()
        assert await purge == 3 * PURGE_CHUNK_ROWS * 4
    finally:
        await store.close()


async def test_a_postgresql_purge_longer_than_the_statement_timeout_completes(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge with much to delete (a lowered TTL, a long stop) goes in chunks that each fit
    the statement timeout: in one DELETE a table it was cut off and rolled back every time, so
    the tables never shrank. A trigger makes each deleted row take 0.4 s against a 1 s bound."""
    store = await open_store(postgres_url)
    try:
        await _expired_and_live_rows(store, 4)
        slow = await asyncpg.connect(postgres_url)
        try:
            await slow.execute(
                "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(0.4); RETURN OLD; END $$"
            )
            await slow.execute(
                "CREATE TRIGGER slow_delete BEFORE DELETE ON conveyor_idempotency "
                "FOR EACH ROW EXECUTE FUNCTION slow_delete()"
            )
        finally:
            await slow.close()
        monkeypatch.setattr(postgres, "_COMMAND_TIMEOUT_SECONDS", 1.0)
        monkeypatch.setattr(postgres, "PURGE_CHUNK_ROWS", 1)

        assert await store.purge_expired() == 3 * 4
        assert await store.purge_expired() == 0
    finally:
        await store.close()
