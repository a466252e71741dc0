"""The store's idempotency claims, against SQLite and the real PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.store import ClaimOutcome, Statements, Store, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path}/conveyor.db" if request.param == "sqlite" else postgres_url
    opened = await open_store(url)
    yield opened
    await opened.close()


def unique() -> str:
    return f"test-{uuid.uuid4().hex}"


async def complete(store: Store, scope: str, key: str, body: bytes, ttl: float = 60) -> None:
    """Store the owner's answer as the Deduplicator does (through a status batch)."""
    await store.write([(Statements.complete, (202, body, time.time() + ttl, scope, key))])


async def test_the_first_claim_owns_the_key_and_a_repeat_replays_its_answer(
    store: Store,
) -> None:
    scope, key = unique(), "k"
    assert (await store.claim(scope, key, "fp", 60)).outcome is ClaimOutcome.OWNER
    assert (await store.claim(scope, key, "fp", 60)).outcome is ClaimOutcome.IN_PROGRESS
    await complete(store, scope, key, b'{"id":"1"}')

    replay = await store.claim(scope, key, "fp", 60)
    assert (replay.outcome, replay.status, replay.body) == (ClaimOutcome.REPLAY, 202, b'{"id":"1"}')
    assert (await store.claim(scope, key, "other", 60)).outcome is ClaimOutcome.CONFLICT


async def test_concurrent_claims_have_exactly_one_owner(store: Store) -> None:
    scope = unique()
    outcomes = await asyncio.gather(*(store.claim(scope, "same", "fp", 60) for _ in range(20)))
    owners = [claim for claim in outcomes if claim.outcome is ClaimOutcome.OWNER]
    assert len(owners) == 1


async def test_a_released_claim_can_be_claimed_again(store: Store) -> None:
    scope = unique()
    assert (await store.claim(scope, "k", "fp", 60)).outcome is ClaimOutcome.OWNER
    await store.release(scope, "k")
    assert (await store.claim(scope, "k", "fp", 60)).outcome is ClaimOutcome.OWNER


async def test_an_expired_answer_is_forgotten(store: Store) -> None:
    scope = unique()
    assert (await store.claim(scope, "k", "fp", 60)).outcome is ClaimOutcome.OWNER
    await complete(store, scope, "k", b"{}", ttl=0.05)
    await asyncio.sleep(0.1)
    assert (await store.claim(scope, "k", "different", 60)).outcome is ClaimOutcome.OWNER


async def test_an_owner_that_never_answered_frees_the_key_when_its_lease_ends(
    store: Store,
) -> None:
    scope = unique()
    assert (await store.claim(scope, "k", "fp", 0.05)).outcome is ClaimOutcome.OWNER
    assert (await store.claim(scope, "k", "fp", 60)).outcome is ClaimOutcome.IN_PROGRESS
    await asyncio.sleep(0.1)  # the owner died mid-request: no answer, no release
    assert (await store.claim(scope, "k", "fp", 60)).outcome is ClaimOutcome.OWNER
    await asyncio.sleep(0.1)
    assert await store.purge_expired() == 0  # the new owner's lease is still running
