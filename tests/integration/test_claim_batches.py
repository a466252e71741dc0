"""Claims taken in batches give each claimer what claiming alone would; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import pytest

from service.store import (
    Claim,
    ClaimBatcher,
    ClaimOutcome,
    ClaimRequest,
    Statements,
    Store,
    open_store,
)
from tests.support.waiting import eventually


class CountingStore:
    """The real store, counting the batches of claims asked of it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[int] = []
        self.gate = asyncio.Event()  # batches wait for it
        self.gate.set()

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        self.batches.append(len(requests))
        await self.gate.wait()
        return await self.store.claim_many(requests)

    async def release(self, scope: str, key: str, owner: str, *, remember: float) -> None:
        await self.store.release(scope, key, owner, remember=remember)


async def prepare(store: Store, scope: str) -> None:
    """Keys in every state: answered, claimed and live, claimed with a lease that ran out."""
    await store.claim(scope, "done", "fp", owner="x", lease=60)
    answer = (202, b'{"done":1}', time.time() + 60, scope, "done", "x")
    await store.write([(Statements.complete, answer)])
    await store.claim(scope, "live", "fp", owner="x", lease=60)
    await store.claim(scope, "expired", "fp", owner="x", lease=-1)


CLAIMS = [
    ("new-0", "fp"),
    ("new-0", "fp"),  # the second of a key in one burst sees the first: in progress
    ("new-0", "other"),  # ... and other content conflicts with it
    ("done", "fp"),
    ("done", "other"),
    ("live", "fp"),
    ("live", "other"),
    ("expired", "other"),  # a lease that ran out is taken over, whatever the content
    ("expired", "other"),
    ("new-1", "fp"),
    *((f"many-{n}", "fp") for n in range(200)),  # more than one statement holds
    ("new-1", "other"),
]


def seen(claim: Claim) -> tuple[ClaimOutcome, int | None, bytes | None]:
    return claim.outcome, claim.status, claim.body


async def test_a_burst_of_claims_gets_what_claiming_one_by_one_gets_in_fewer_calls(
    store: Store,
) -> None:
    alone, batched = f"alone-{uuid.uuid4().hex}", f"batched-{uuid.uuid4().hex}"
    await prepare(store, alone)
    await prepare(store, batched)
    one_by_one = [
        await store.claim(alone, key, fingerprint, owner=uuid.uuid4().hex, lease=60)
        for key, fingerprint in CLAIMS
    ]
    counting = CountingStore(store)
    claims = ClaimBatcher(counting, remember=60, max_batch=500)  # type: ignore[arg-type]  # claim_many and release are all it uses
    together = await asyncio.gather(
        *(
            claims.claim(batched, key, fingerprint, owner=uuid.uuid4().hex, lease=60)
            for key, fingerprint in CLAIMS
        )
    )
    await claims.close()

    assert [seen(claim) for claim in together] == [seen(claim) for claim in one_by_one]
    assert seen(together[3]) == (ClaimOutcome.REPLAY, 202, b'{"done":1}')
    assert [claim.outcome for claim in together[:3]] == [
        ClaimOutcome.OWNER,
        ClaimOutcome.IN_PROGRESS,
        ClaimOutcome.CONFLICT,
    ]
    assert together[7].outcome is ClaimOutcome.OWNER
    # A key asked again waits for the next batch: three batches (new-0 thrice), not 212 calls.
    assert counting.batches == [205, 5, 1]


async def test_a_key_its_owner_still_holds_is_in_progress_in_a_batch_as_alone(
    store: Store,
) -> None:
    # A batch with a live key must not hand that key to whoever holds it, even to the same
    # owner (a review found SQLite's batch answering OWNER there), and still claims the rest.
    scope = f"test-{uuid.uuid4().hex}"
    assert (await store.claim(scope, "held", "fp", owner="o", lease=60)).outcome is (
        ClaimOutcome.OWNER
    )
    keys = ["held", *(f"new-{n}" for n in range(3))]
    again = await store.claim_many([ClaimRequest(scope, key, "fp", "o", 60) for key in keys])
    assert [claim.outcome for claim in again] == [
        ClaimOutcome.IN_PROGRESS,
        *[ClaimOutcome.OWNER] * 3,
    ]
    alone = await store.claim(scope, "held", "fp", owner="o", lease=60)
    assert alone.outcome is ClaimOutcome.IN_PROGRESS
    others = await store.claim_many([ClaimRequest(scope, key, "fp", "x", 60) for key in keys])
    assert {claim.outcome for claim in others} == {ClaimOutcome.IN_PROGRESS}


async def test_concurrent_claims_of_one_key_have_exactly_one_owner(store: Store) -> None:
    scope = f"test-{uuid.uuid4().hex}"
    claims = ClaimBatcher(store, remember=60, max_batch=7)
    outcomes = await asyncio.gather(
        *(
            claims.claim(scope, f"k-{n % 10}", "fp", owner=uuid.uuid4().hex, lease=60)
            for n in range(100)
        )
    )
    await claims.close()
    owners = [n % 10 for n, claim in enumerate(outcomes) if claim.outcome is ClaimOutcome.OWNER]
    assert sorted(owners) == list(range(10))
    assert all(claim.outcome is ClaimOutcome.IN_PROGRESS for claim in outcomes[10:])


async def test_a_failed_batch_fails_every_claim_in_it(store: Store) -> None:
    claims = ClaimBatcher(store, remember=60)
    await store.close()  # every statement now fails, as with a store that went away
    results = await asyncio.gather(
        *(claims.claim("s", f"k-{n}", "fp", owner="o", lease=60) for n in range(20)),
        return_exceptions=True,
    )
    await claims.close()
    assert all(isinstance(result, Exception) for result in results), results


async def test_a_claim_whose_claimer_gave_up_while_it_was_taken_is_released(store: Store) -> None:
    scope = f"test-{uuid.uuid4().hex}"
    counting = CountingStore(store)
    counting.gate.clear()
    claims = ClaimBatcher(counting, remember=60)  # type: ignore[arg-type]  # claim_many and release are all it uses
    impatient = asyncio.create_task(claims.claim(scope, "k", "fp", owner="gone", lease=60))

    async def on_its_way() -> bool:
        return counting.batches == [1]

    await eventually(on_its_way, what="its batch on its way to the store")
    impatient.cancel()
    counting.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    # Without the release, the key would stay claimed for the whole 60 s lease.
    retry = await claims.claim(scope, "k", "fp", owner="retry", lease=60)
    await claims.close()
    assert retry.outcome is ClaimOutcome.OWNER
    assert counting.batches == [1, 1]


async def test_two_processes_claiming_overlapping_keys_in_opposite_orders_get_one_owner_each(
    postgres_url: str,
) -> None:
    # Two pools stand for two conveyor processes on one PostgreSQL. Unordered multi-row
    # upserts of the same keys in opposite orders can deadlock; claims lock rows in key order.
    first, second = await open_store(postgres_url), await open_store(postgres_url)
    try:
        for round_number in range(20):
            keys = [f"r{round_number}-{index:03d}" for index in range(200)]

            def requests(order: list[str], owner: str) -> list[ClaimRequest]:
                return [ClaimRequest("event", key, "fp", owner, 60) for key in order]

            forwards, backwards = await asyncio.gather(
                first.claim_many(requests(keys, "one")),
                second.claim_many(requests(keys[::-1], "two")),
            )
            owners = [c.outcome is ClaimOutcome.OWNER for c in forwards]
            owners_backwards = [c.outcome is ClaimOutcome.OWNER for c in backwards[::-1]]
            # Each key has exactly one owner; the other claimer sees it in progress.
            assert all(a != b for a, b in zip(owners, owners_backwards, strict=True))
    finally:
        await first.close()
        await second.close()
