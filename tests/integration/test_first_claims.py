"""Claims that remember an earlier attempt: only a key's first claim is `first`; both backends.

What the ingress marks as a first copy rests on this (producers.first_copy): a claim after an
expired or released one must not be first, since that attempt's publish may be in RabbitMQ.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from service.store import ClaimOutcome, ClaimRequest, Statements, Store, open_store
from service.store.marks_key import first_copy_key
from tests.support.clock import ShiftedClock


@pytest.fixture
async def clocked(store_url: str) -> AsyncIterator[tuple[Store, ShiftedClock]]:
    clock = ShiftedClock()
    opened = await open_store(store_url, clock=clock)
    yield opened, clock
    await opened.close()


def scope() -> str:
    return f"test-{uuid.uuid4().hex}"


async def first(store: Store, where: str, key: str, owner: str, lease: float = 60) -> bool:
    claim = await store.claim(where, key, "fp", owner=owner, lease=lease)
    assert claim.outcome is ClaimOutcome.OWNER
    return claim.first


async def test_a_new_key_is_claimed_first_and_a_retry_after_a_release_is_not(
    clocked: tuple[Store, ShiftedClock],
) -> None:
    store, clock = clocked
    where = scope()
    assert await first(store, where, "k", "a")
    # The publish failed (a 503): released, but remembered for the TTL.
    await store.release(where, "k", "a", remember=3600)
    assert not await first(store, where, "k", "b")  # claimable at once, but not first
    await store.release(where, "k", "b", remember=3600)
    clock.advance(1800)
    assert await store.purge_expired() == 0  # still remembered
    assert not await first(store, where, "k", "c")
    # Once a released key's memory ran out (and it was purged), the key is new again.
    await store.release(where, "k", "c", remember=60)
    clock.advance(61)
    await store.purge_expired()
    assert await first(store, where, "k", "d")


async def test_a_claim_that_takes_over_an_expired_lease_is_not_first(
    clocked: tuple[Store, ShiftedClock],
) -> None:
    store, clock = clocked
    where = scope()
    assert await first(store, where, "k", "a", lease=5)
    clock.advance(6)  # its owner died mid-request: it may have published
    assert not await first(store, where, "k", "b")


async def test_claims_in_batches_tell_first_claims_from_later_ones(store: Store) -> None:
    where = scope()
    await store.claim(where, "released", "fp", owner="x", lease=60)
    await store.release(where, "released", "x", remember=3600)
    await store.claim(where, "held", "fp", owner="x", lease=60)
    requests = [ClaimRequest(where, key, "fp", "y", 60) for key in ("new", "released", "held")]
    new, released, held = await store.claim_many(requests)
    assert (new.outcome, new.first) == (ClaimOutcome.OWNER, True)
    assert (released.outcome, released.first) == (ClaimOutcome.OWNER, False)
    assert held.outcome is ClaimOutcome.IN_PROGRESS
    # All new: the batch's quick path.
    fresh = await store.claim_many([ClaimRequest(where, f"n-{i}", "fp", "z", 60) for i in range(9)])
    assert {(claim.outcome, claim.first) for claim in fresh} == {(ClaimOutcome.OWNER, True)}


async def test_every_process_of_a_store_shares_one_marks_key(store_url: str) -> None:
    one = await open_store(store_url)
    other = await open_store(store_url)
    try:
        key = await first_copy_key(one)
        assert await first_copy_key(other) == key
        assert len(key) == 32
        # Not an idempotency key anyone sent: not counted, never purged.
        assert "conveyor-marks" not in await one.count_keys()
        rows = await one.query(Statements.select_marks_key)
        assert len(rows) == 1
    finally:
        await one.close()
        await other.close()
