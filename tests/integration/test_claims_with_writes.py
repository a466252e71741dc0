"""Claims of concurrent requests go to the store with the answers' writes, in one operation a
turn, each caller told only its own outcome; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from service import Role
from service.http.idempotency import Answer, Deduplicator
from service.store import (
    BatchWriter,
    ClaimBatcher,
    ClaimOutcome,
    ClaimRequest,
    Statements,
    Store,
    Write,
    open_store,
)
from service.store.base import ClaimsAndWrite
from service.store.sqlite import SqliteStore
from tests.conftest import StartConveyor, subscription, take_published
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder


class CountingStore:
    """The real store, recording each operation asked of it: (kind, claims, writes)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.operations: list[tuple[str, int, int]] = []
        self.running = self.most_running = 0  # operations handed to the store, not answered

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            yield
        finally:
            self.running -= 1

    async def claim_and_write(
        self, requests: Sequence[ClaimRequest], writes: Sequence[Write]
    ) -> ClaimsAndWrite:
        self.operations.append(("claim_and_write", len(requests), len(writes)))
        with self._counted():
            return await self.store.claim_and_write(requests, writes)

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Any]:
        self.operations.append(("claim_many", len(requests), 0))
        return await self.store.claim_many(requests)

    async def write(self, writes: Sequence[Write]) -> None:
        self.operations.append(("write", 0, len(writes)))
        with self._counted():
            await self.store.write(writes)

    async def release(self, scope: str, key: str, owner: str, *, remember: float) -> None:
        await self.store.release(scope, key, owner, remember=remember)


@pytest.fixture
async def counted(store: Store) -> AsyncIterator[tuple[Deduplicator, CountingStore, BatchWriter]]:
    """A deduplicator as the app builds it (claims riding the status writer's turns), over the
    real store counted."""
    counting = CountingStore(store)
    seam = cast("Store", counting)  # the operations the writer and the batcher use
    writer = BatchWriter(seam, queue_ahead=store.serial)  # as the app builds it
    writer.start()
    claims = ClaimBatcher(seam, remember=60, writer=writer)
    deduplicator = Deduplicator(claims, writer, ttl=60, wait=10, store_timeout=10)
    yield deduplicator, counting, writer
    await claims.close()
    await writer.close()


class Conflicted(Exception):  # noqa: N818 - what the test's conflicts are refused with
    pass


async def test_concurrent_single_requests_share_one_operation_for_claims_and_one_for_answers(
    counted: tuple[Deduplicator, CountingStore, BatchWriter],
) -> None:
    deduplicator, counting, _ = counted
    scope = f"test-{uuid.uuid4().hex}"
    produced: list[str] = []

    def request(key: str, fingerprint: str) -> asyncio.Task[Answer]:
        async def produce(_first: bool) -> Answer:  # noqa: FBT001 - the claim's answer
            produced.append(key)
            return Answer(202, f'{{"key":"{key}"}}'.encode())

        return asyncio.create_task(
            deduplicator.once(scope, key, fingerprint, produce, conflict=Conflicted)
        )

    # All in one turn: 30 keys, one of them sent twice alike and once with other content.
    firsts = [request(f"k-{n}", "fp") for n in range(30)]
    repeated, conflicting = request("k-7", "fp"), request("k-7", "other")
    answers = await asyncio.gather(*firsts)
    repeat = await repeated
    with pytest.raises(Conflicted):
        await conflicting

    assert sorted(produced) == sorted(f"k-{n}" for n in range(30))  # k-7 once
    assert [(a.status, a.body, a.replayed) for a in answers] == [
        (202, f'{{"key":"k-{n}"}}'.encode(), False) for n in range(30)
    ]
    assert (repeat.status, repeat.body, repeat.replayed) == (202, b'{"key":"k-7"}', True)
    # The 30 claims in one operation; the 30 answers in one with the repeated key's claims
    # (a key is claimed once per operation: its second and third claims wait for the next).
    assert counting.operations[:2] == [("claim_and_write", 30, 0), ("claim_and_write", 1, 30)]
    # Nothing went to the store apart: later operations are the repeats asking again.
    assert {kind for kind, _, _ in counting.operations} == {"claim_and_write"}
    assert all(writes == 0 for _, _, writes in counting.operations[2:])


def complete(scope: str, key: str, body: bytes) -> Write:
    return (Statements.complete, (202, body, 4_102_444_800.0, scope, key, "o"))


async def test_a_write_the_store_refuses_fails_its_caller_alone(
    counted: tuple[Deduplicator, CountingStore, BatchWriter], store: Store
) -> None:
    _, counting, writer = counted
    scope = f"test-{uuid.uuid4().hex}"
    for key in ("a", "b"):
        await store.claim(scope, key, "fp", owner="o", lease=60)
    claims = ClaimBatcher(cast("Store", counting), remember=60, writer=writer)
    refused: Write = ("INSERT INTO no_such_table VALUES (?)", (1,))
    # One turn: an answer, a write the store refuses, another answer, and five claims.
    first = asyncio.create_task(writer.store(complete(scope, "a", b"A")))
    broken = asyncio.create_task(writer.store(refused))
    second = asyncio.create_task(writer.store(complete(scope, "b", b"B")))
    taken = [
        asyncio.create_task(claims.claim(scope, f"k-{n}", "fp", owner="o", lease=60))
        for n in range(5)
    ]
    await first
    await second
    with pytest.raises(Exception, match="no_such_table"):
        await broken
    assert [claim.outcome for claim in await asyncio.gather(*taken)] == [ClaimOutcome.OWNER] * 5
    # One operation for all; then each write alone, the refused one failing by itself.
    assert counting.operations == [("claim_and_write", 5, 3), *[("write", 0, 1)] * 3]
    for key, body in (("a", b"A"), ("b", b"B")):
        replay = await store.claim(scope, key, "fp", owner="x", lease=60)
        assert (replay.outcome, replay.body) == (ClaimOutcome.REPLAY, body)
    await claims.close()


async def test_a_claim_the_store_refuses_fails_its_claimer_alone(
    counted: tuple[Deduplicator, CountingStore, BatchWriter], store: Store
) -> None:
    _, counting, writer = counted
    scope = f"test-{uuid.uuid4().hex}"
    await store.claim(scope, "answered", "fp", owner="o", lease=60)
    claims = ClaimBatcher(cast("Store", counting), remember=60, writer=writer)
    unbindable = cast("str", object())  # no store can take it: the claims' statement fails
    written = asyncio.create_task(writer.store(complete(scope, "answered", b"kept")))
    before = asyncio.create_task(claims.claim(scope, "k-1", "fp", owner="o", lease=60))
    refused = asyncio.create_task(claims.claim(scope, "k-2", unbindable, owner="o", lease=60))
    after = asyncio.create_task(claims.claim(scope, "k-3", "fp", owner="o", lease=60))
    await written  # stored though the claims beside it failed
    assert (await before).outcome is ClaimOutcome.OWNER
    assert (await after).outcome is ClaimOutcome.OWNER
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver words it its own way
        await refused
    # One operation for all; then each claim alone, the refused one failing by itself.
    assert counting.operations == [("claim_and_write", 3, 1), *[("claim_many", 1, 0)] * 3]
    replay = await store.claim(scope, "answered", "fp", owner="x", lease=60)
    assert (replay.outcome, replay.body) == (ClaimOutcome.REPLAY, b"kept")
    await claims.close()


async def test_concurrent_posts_on_sqlite_claim_with_the_writes_and_get_their_own_answers(
    start_conveyor: StartConveyor, namespace: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    operations: list[str] = []
    claim_and_write, claim_many = SqliteStore.claim_and_write, SqliteStore.claim_many

    async def counted_claim_and_write(
        self: SqliteStore, requests: Sequence[ClaimRequest], writes: Sequence[Write]
    ) -> ClaimsAndWrite:
        operations.append("claim_and_write")
        return await claim_and_write(self, requests, writes)

    async def counted_claim_many(self: SqliteStore, requests: Sequence[ClaimRequest]) -> Any:
        operations.append("claim_many")
        return await claim_many(self, requests)

    monkeypatch.setattr(SqliteStore, "claim_and_write", counted_claim_and_write)
    monkeypatch.setattr(SqliteStore, "claim_many", counted_claim_many)
    conveyor = await start_conveyor((subscription("once", ("#",), Recorder()),), role=Role.INGRESS)
    event = {"specversion": "1.0", "source": "/orders", "type": "order.placed"}
    ct = {"Content-Type": "application/cloudevents+json"}
    documents = [{**event, "id": f"o-{n}", "data": n} for n in range(20)]
    documents += [{**event, "id": "o-3", "data": 3}, {**event, "id": "o-3", "data": "other"}]

    responses = await asyncio.gather(
        *(conveyor.client.post("/v1/events", json=doc, headers=ct) for doc in documents)
    )

    # Of the three posts of o-3, the content that came first is accepted (twice: once a
    # replay) and the other refused, whichever that was.
    assert [response.status for response in responses[:20]] == [202] * 20
    answers = {
        "first": responses[3].status,
        "repeat": responses[20].status,
        "other": responses[21].status,
    }
    assert answers in (
        {"first": 202, "repeat": 202, "other": 422},
        {"first": 422, "repeat": 422, "other": 202},
    )
    refused = responses[21] if answers["other"] == 422 else responses[3]
    problem = await refused.json(content_type="application/problem+json")
    assert problem["type"] == "urn:conveyor:problem:event-id-conflict"
    queue = namespace.topology.queue("once")
    taken = await take_published(conveyor, namespace, queue, sentinel_type="test.sentinel")
    assert sorted(message.message_id or "" for message in taken) == sorted(
        f"o-{n}" for n in range(20)
    )  # o-3 once
    # Every claim rode an operation with the writes; none went to the store alone.
    assert "claim_and_write" in operations
    assert "claim_many" not in operations


async def test_batches_handed_to_sqlite_ahead_apply_in_the_order_they_were_asked(
    tmp_path: Path,
) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/ahead.db")
    counting = CountingStore(store)
    writer = BatchWriter(cast("Store", counting), queue_ahead=True)
    writer.start()
    scope = f"test-{uuid.uuid4().hex}"
    await store.claim(scope, "k", "fp", owner="o", lease=60)
    try:
        # Each answer in a turn of its own, while the batches before it are on their way.
        stored = []
        for n in range(100):
            stored.append(asyncio.create_task(writer.store(complete(scope, "k", b"%d" % n))))
            await asyncio.sleep(0)
        await asyncio.gather(*stored)
        replay = await store.claim(scope, "k", "fp", owner="x", lease=60)
    finally:
        await writer.close()
        await store.close()
    assert (replay.outcome, replay.body) == (ClaimOutcome.REPLAY, b"99")
    assert counting.most_running == 2  # a batch was handed over while the one before ran
