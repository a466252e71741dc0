"""The store's idempotency claims, against SQLite and the real PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
import uuid

from service.store import ClaimOutcome, Statements, Store


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
    store: Store, scope: str, key: str, body: bytes, *, owner: str = "a", ttl: float = 60
) -> None:
    """Store the owner's answer as the Deduplicator does (through a status batch)."""
    answer = (202, body, time.time() + ttl, scope, key, owner)
    await store.write([(Statements.complete, answer)])


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
    await store.release(scope, "k", "a")
    assert await claim(store, scope, "k", owner="b") is ClaimOutcome.OWNER


async def test_an_expired_answer_is_forgotten(store: Store) -> None:
    scope = unique()
    assert await claim(store, scope, "k") is ClaimOutcome.OWNER
    await complete(store, scope, "k", b"{}", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await claim(store, scope, "k", "different", owner="b") is ClaimOutcome.OWNER


async def test_an_owner_that_never_answered_frees_the_key_when_its_lease_ends(
    store: Store,
) -> None:
    scope = unique()
    assert await claim(store, scope, "k", lease=0.05) is ClaimOutcome.OWNER
    assert await claim(store, scope, "k", owner="b") is ClaimOutcome.IN_PROGRESS
    await asyncio.sleep(0.1)  # the owner stalled or died mid-request: no answer, no release
    assert await claim(store, scope, "k", owner="b") is ClaimOutcome.OWNER

    # The stale owner wakes up: its answer and its release are void, the new owner's stand.
    await complete(store, scope, "k", b'{"id":"stale"}', owner="a")
    await store.release(scope, "k", "a")
    assert await claim(store, scope, "k", owner="c") is ClaimOutcome.IN_PROGRESS
    await complete(store, scope, "k", b'{"id":"new"}', owner="b")
    replay = await store.claim(scope, "k", "fp", owner="d", lease=60)
    assert (replay.outcome, replay.body) == (ClaimOutcome.REPLAY, b'{"id":"new"}')
    assert await store.purge_expired() == 0  # nothing here has expired
