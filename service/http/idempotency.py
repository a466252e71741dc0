"""Saying yes once: the Idempotency-Key of a request and the CloudEvents identity of an event.

A repeat within the TTL gets the first answer and publishes nothing; the same key with other
content is refused, saying what collided (the Idempotency-Key, or the event's source and id); of
two concurrent requests with one key, one publishes and the other waits for its answer. Only
final answers are kept: a failure (5xx, or an exception) releases the claim so that the client's
retry is not stuck with it.

A released key stays known (without an owner) for the TTL: a publish that failed with a 503 may
still have reached RabbitMQ (a lost confirm is not a lost message). `produce` is told whether its
claim is the key's first (`Claim.first`); only then is what it publishes provably the first copy.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson
import structlog

from consumers.deadlines import SharedTimeout
from producers import OutgoingEvent
from service.clock import SYSTEM_CLOCK, Clock
from service.store import (
    WRITE_TIMEOUT_SECONDS,
    BatchWriter,
    Claim,
    ClaimOutcome,
    ClaimRequest,
    IdempotencyStore,
    Statements,
    StoreUnavailableError,
    Write,
    describe,
    within,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "Answer",
    "Conflict",
    "Deduplicator",
    "EventIdConflictError",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "InvalidIdempotencyKeyError",
    "check_key",
    "event_fingerprint",
    "event_identity",
    "request_fingerprint",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_POLL_SECONDS = 0.02
_SERVER_ERROR = 500
_log = structlog.get_logger(component="idempotency")
# Beyond the owner's longest honest work (publish, then two store writes), so a live owner
# never loses its key to a retry that would publish again.
_LEASE_MARGIN_SECONDS = 30.0
# Produces the answer of a claimed key; told whether the claim was the key's first.
Produce = Callable[[bool], Awaitable["Answer"]]
# Produces the answers of the entries at these indices, told whether each claim was a first.
ProduceMany = Callable[[Sequence[int], Sequence[bool]], Awaitable[Sequence["Answer | Exception"]]]


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used before for a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the Idempotency-Key {key!r} was already used for a different request")
        self.key = key


class EventIdConflictError(Exception):
    """An event with this source and id was accepted before with other content."""

    def __init__(self, source: str, event_id: str) -> None:
        super().__init__(
            f"an event with source {source!r} and id {event_id!r} was accepted before with "
            "other content (attributes or data; time aside); send it with a new id"
        )
        self.source = source
        self.event_id = event_id


# What a key used before for other content is refused with: the caller knows what the key
# stands for (a client's Idempotency-Key, or an event's source and id), the store only its hash.
Conflict = Callable[[], Exception]


class IdempotencyInProgressError(Exception):
    """Another request with this key has not answered yet."""


class InvalidIdempotencyKeyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    replayed: bool = False
    # Where the accepted single event's status is, when known without parsing `body` (a first
    # answer); a replay is read back from the store with status and body only.
    location: str | None = None
    # Writes to commit together with the answer (the accepted event's status): one transaction
    # and one wait per request instead of two in a row. Only for an answer kept.
    writes: tuple[Write, ...] = ()


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise InvalidIdempotencyKeyError(
            f"{IDEMPOTENCY_HEADER} must be 1-255 visible ASCII characters"
        )
    return key


def request_fingerprint(content_type: str | None, headers: Mapping[str, str], body: bytes) -> str:
    digest = hashlib.sha256()
    digest.update((content_type or "").encode())
    for name in sorted(name for name in headers if name.startswith("ce-")):
        digest.update(b"\0" + name.encode() + b"\0" + headers[name].encode())
    digest.update(b"\0" + body)
    return digest.hexdigest()


def event_identity(event: OutgoingEvent) -> str:
    """The key of an event's CloudEvents identity: ids are unique per source only."""
    return hashlib.sha256(f"{event.source}\0{event.id}".encode()).hexdigest()


def event_fingerprint(event: OutgoingEvent) -> str:
    # `time` may be filled in by us per request; it does not make two events different.
    attributes = {k: v for k, v in event.attributes.items() if k != "time"}
    digest = hashlib.sha256(orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS))
    digest.update(b"\0" + (event.datacontenttype or "").encode() + b"\0" + event.data)
    return digest.hexdigest()


class Deduplicator:
    def __init__(
        self,
        store: IdempotencyStore,
        writer: BatchWriter,
        *,
        ttl: float,
        wait: float,
        store_timeout: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock  # when a kept answer expires
        # Each wait for the store is bounded: a claim not answered in time fails the request
        # with StoreUnavailableError (503) before anything is published.
        self._store_timeout = SharedTimeout(store_timeout)
        self._releasing: set[asyncio.Task[None]] = set()  # see _release_later
        self._writer = writer  # answers are stored with the status writes, in one transaction
        self._ttl = ttl
        self._wait = wait  # how long a duplicate waits for the first request's answer
        # An owner that died mid-request frees its key after this, not after the whole TTL.
        self._lease = wait + 2 * WRITE_TIMEOUT_SECONDS + _LEASE_MARGIN_SECONDS

    async def once(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        produce: Produce,
        *,
        conflict: Conflict,
    ) -> Answer:
        deadline = asyncio.get_running_loop().time() + self._wait
        owner = _new_owner()
        while True:
            try:
                claim = await within(
                    self._store_timeout,
                    self._store.claim(scope, key, fingerprint, owner=owner, lease=self._lease),
                )
            except StoreUnavailableError:
                self._release_later(scope, [key], owner)
                raise
            match claim.outcome:
                case ClaimOutcome.OWNER:
                    return await self._produce(
                        scope, key, owner, functools.partial(produce, claim.first)
                    )
                case ClaimOutcome.REPLAY:
                    return Answer(claim.status or 200, claim.body or b"", replayed=True)
                case ClaimOutcome.CONFLICT:
                    raise conflict()
                case ClaimOutcome.IN_PROGRESS:
                    if asyncio.get_running_loop().time() > deadline:
                        raise IdempotencyInProgressError(
                            "a request with this key is still being answered; retry later"
                        )
                    await asyncio.sleep(_POLL_SECONDS)

    async def once_many(
        self,
        scope: str,
        identities: Sequence[tuple[str, str]],
        produce: ProduceMany,
        *,
        conflict: Callable[[int], Exception],
    ) -> list[Answer | Exception]:
        """`once` for each (key, fingerprint) of `identities`, in few store statements.

        `produce(indices, firsts)` produces the entries claimed here, all at once (`firsts`:
        whether each claim was its key's first). The first use of each key is claimed in one
        statement and the answers are stored in one write; a key repeated in `identities`, or
        found in progress, goes through `once` alongside (it waits its turn).
        """
        batch = _ManyClaims(scope, identities, owner=_new_owner(), conflict=conflict)
        requests = batch.requests(self._lease)
        try:
            claims = await within(self._store_timeout, self._store.claim_many(requests))
        except StoreUnavailableError:
            self._release_later(scope, [request.key for request in requests], batch.owner)
            raise
        owned = batch.sort(claims)

        async def alone(index: int) -> None:
            async def produce_one(first: bool) -> Answer:  # noqa: FBT001 - `Produce`'s shape
                (answer,) = await produce([index], [first])
                if isinstance(answer, Exception):
                    raise answer
                return answer

            try:
                batch.results[index] = await self.once(
                    scope,
                    *identities[index],
                    produce_one,
                    conflict=functools.partial(conflict, index),
                )
            except Exception as error:  # noqa: BLE001 - the entry's own outcome, as `once` raises it
                batch.results[index] = error

        async with asyncio.TaskGroup() as group:
            for index in batch.one_by_one:
                group.create_task(alone(index))
            if owned:
                await self._produce_owned(batch, owned, produce)
        return batch.finished()

    async def _produce_owned(
        self,
        batch: _ManyClaims,
        owned: list[int],
        produce: ProduceMany,
    ) -> None:
        scope, owner = batch.scope, batch.owner
        try:
            answers = await produce(owned, [batch.first[index] for index in owned])
        except BaseException:
            await asyncio.shield(
                asyncio.gather(*(self._release(scope, batch.key(i), owner) for i in owned))
            )
            raise
        for index, answer in zip(owned, answers, strict=True):
            batch.results[index] = answer
        await self._keep(
            scope, owner, [(batch.key(i), answer) for i, answer in zip(owned, answers, strict=True)]
        )

    async def _produce(
        self, scope: str, key: str, owner: str, produce: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        try:
            answer = await produce()
        except BaseException:
            await asyncio.shield(self._release(scope, key, owner))
            raise
        await self._keep(scope, owner, [(key, answer)])
        return answer

    async def _keep(
        self, scope: str, owner: str, produced: Sequence[tuple[str, Answer | Exception]]
    ) -> None:
        """After producing: release each key whose answer failed (an exception or a 5xx), so a
        retry is not stuck with it, and store the other answers, with the writes that go with
        them, in one write."""
        expires_at = self._clock.now() + self._ttl
        writes: list[Write] = []
        releases = []
        for key, answer in produced:
            if isinstance(answer, Exception) or answer.status >= _SERVER_ERROR:
                releases.append(self._release(scope, key, owner))
                continue
            writes += answer.writes
            complete = (answer.status, answer.body, expires_at, scope, key, owner)
            writes.append((Statements.complete, complete))
        await asyncio.gather(*releases)
        if not writes:
            return
        try:
            # Past the bound the writes stay queued in the writer and land when the store
            # answers again; the request does not wait for them.
            await within(self._store_timeout, self._writer.store(*writes))
        except Exception as error:  # noqa: BLE001 - the answers stand; only their replay is lost
            # What was produced happened (events are in RabbitMQ): answer it. A repeat within
            # the lease waits and gets 409; after it, it is treated as new. A status written
            # with an answer appears once a consumer reports on the event.
            _log.warning(
                "could not store the answer for replays",
                scope=scope,
                answers=len(produced) - len(releases),
                writes_with_them=len(writes),
                error=describe(error),
            )

    def _release_later(self, scope: str, keys: Sequence[str], owner: str) -> None:
        """Free keys whose claim failed or was given up, in case the store took it anyway
        (it finishes what it started, or the connection broke after the commit): the client's
        retry would otherwise wait out the lease. Not awaited: the request answers at once."""
        task = asyncio.create_task(self._release_all(scope, keys, owner))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_all(self, scope: str, keys: Sequence[str], owner: str) -> None:
        await asyncio.gather(*(self._release(scope, key, owner) for key in keys))

    async def _release(self, scope: str, key: str, owner: str) -> None:
        try:
            await within(
                self._store_timeout, self._store.release(scope, key, owner, remember=self._ttl)
            )
        except Exception as error:  # noqa: BLE001 - the lease frees the key in the end
            _log.warning("could not release an idempotency key", scope=scope, error=describe(error))


class _ManyClaims:
    """The entries of one `once_many`: which are claimed together, and what became of each."""

    def __init__(
        self,
        scope: str,
        identities: Sequence[tuple[str, str]],
        *,
        owner: str,
        conflict: Callable[[int], Exception],
    ) -> None:
        self.scope = scope
        self.owner = owner
        self._conflict = conflict
        self._identities = identities
        self.firsts: dict[str, int] = {}  # each key's first entry: claimed in one statement
        for index, (key, _) in enumerate(identities):
            self.firsts.setdefault(key, index)
        self.one_by_one = [i for i in range(len(identities)) if self.firsts[identities[i][0]] != i]
        self.results: list[Answer | Exception | None] = [None] * len(identities)
        self.first: dict[int, bool] = {}  # each owned entry: whether its claim was the key's first

    def key(self, index: int) -> str:
        return self._identities[index][0]

    def requests(self, lease: float) -> list[ClaimRequest]:
        return [
            ClaimRequest(self.scope, key, self._identities[index][1], self.owner, lease)
            for key, index in self.firsts.items()
        ]

    def sort(self, claims: Sequence[Claim]) -> list[int]:
        """Settle the replays and conflicts; the entries owned here (in progress: one by one)."""
        owned = []
        for index, claim in zip(self.firsts.values(), claims, strict=True):
            match claim.outcome:
                case ClaimOutcome.OWNER:
                    owned.append(index)
                    self.first[index] = claim.first
                case ClaimOutcome.REPLAY:
                    self.results[index] = Answer(
                        claim.status or 200, claim.body or b"", replayed=True
                    )
                case ClaimOutcome.CONFLICT:
                    self.results[index] = self._conflict(index)
                case ClaimOutcome.IN_PROGRESS:
                    self.one_by_one.append(index)
        return owned

    def finished(self) -> list[Answer | Exception]:
        done = [result for result in self.results if result is not None]
        if len(done) != len(self.results):
            raise RuntimeError("an entry of once_many was left without an outcome")
        return done


def _new_owner() -> str:
    # 128 random bits from `random`, not `uuid.uuid4()`, for the reason `ingress` gives.
    return f"{random.getrandbits(128):032x}"
