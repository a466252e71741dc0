"""What the service keeps: idempotency claims, and event statuses written in batches."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Claim",
    "ClaimOutcome",
    "ClaimRequest",
    "ClaimsAndWrite",
    "IdempotencyStore",
    "Store",
    "Write",
    "check_distinct",
    "purge_in_chunks",
    "stored_claim",
]

# One statement of service.store.sql.Statements with its parameters.
Write = tuple[str, tuple[Any, ...]]


class ClaimOutcome(enum.StrEnum):
    OWNER = "owner"  # first with this key: go ahead, then complete() or release()
    REPLAY = "replay"  # seen and answered: return the stored answer, do nothing else
    CONFLICT = "conflict"  # the key was used for a different request
    IN_PROGRESS = "in-progress"  # another request with this key has not answered yet


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    status: int | None = None
    body: bytes | None = None
    # OWNER of a key that no claim held before within its expiry: nothing was published for it
    # yet. False after an expired or released claim, whose attempt may have reached RabbitMQ.
    first: bool = False


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """The arguments of one `IdempotencyStore.claim`, for `claim_many`."""

    scope: str
    key: str
    fingerprint: str
    owner: str
    lease: float


@dataclass(frozen=True, slots=True)
class ClaimsAndWrite:
    """What `Store.claim_and_write` did: each part's outcome on its own, a failure of one part
    leaving the other's standing."""

    claims: list[Claim] | Exception  # in the order of the requests, or why none was taken
    write_error: Exception | None  # None: the writes are committed


def check_distinct(requests: Sequence[ClaimRequest]) -> None:
    """`claim_many`'s precondition: one key twice in one statement would make both owners."""
    if len({(request.scope, request.key) for request in requests}) != len(requests):
        raise ValueError("claim_many takes each key once; claim a repeated key in a later call")


async def purge_in_chunks(
    statements: Sequence[str], chunk_rows: int, delete: Callable[[str], Awaitable[int]]
) -> int:
    """Each of a backend's purge statements (one a table), run through `delete` until a run
    deletes fewer than `chunk_rows` rows: the rows purged. The rest, if another process took
    some of a chunk or rows expired meanwhile, goes at the next purge."""
    purged = 0
    for statement in statements:
        while True:
            deleted = await delete(statement)
            purged += deleted
            if deleted < chunk_rows:
                break
    return purged


def stored_claim(fingerprint: str, row: tuple[Any, Any, Any] | None) -> Claim | None:
    """What a claimer who did not win learns from the key's row; None: the row is gone."""
    # No row, or one of NULLs (`select_claims` for a key without a row): released between our
    # insert and select, so the caller tries again.
    if row is None or row[0] is None:
        return None
    stored_fingerprint, status, body = row
    if stored_fingerprint != fingerprint:
        return Claim(ClaimOutcome.CONFLICT)
    if status is None:
        return Claim(ClaimOutcome.IN_PROGRESS)
    return Claim(ClaimOutcome.REPLAY, int(status), bytes(body))


class IdempotencyStore(Protocol):
    async def claim(
        self, scope: str, key: str, fingerprint: str, *, owner: str, lease: float
    ) -> Claim:
        """Claim `key` in `scope` atomically: exactly one concurrent caller becomes OWNER.

        The owner (a token unique to the caller) holds the key for `lease` seconds; it stores
        its answer (Statements.complete, through a batch) or releases the key. A lease that ran
        out can be claimed by someone else, and then the old owner's answer or release is void.
        """
        ...

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        """`claim` for each request (keys distinct), in few statements; answers in order.

        Each request gets what `claim` alone would have answered at that moment. Two requests
        for one key must go to separate calls: the second then sees the first's claim.
        """
        ...

    async def release(self, scope: str, key: str, owner: str, *, remember: float) -> None:
        """Give up an unanswered claim (the request failed; a retry may claim it at once).

        The key stays known for `remember` seconds without an owner: what the failed attempt
        published may have reached RabbitMQ, so the next claim is not `first`.
        """
        ...

    async def purge_expired(self) -> int: ...

    async def close(self) -> None: ...


class Store(IdempotencyStore, Protocol):
    # True when the store runs its operations one at a time (SQLite's one thread): claims and
    # writes asked for together then wait once instead of twice in line. PostgreSQL runs them
    # side by side on pooled connections, and one waiting for the other would only slow both.
    serial: bool

    async def write(self, writes: Sequence[Write]) -> None:
        """Apply `writes` in one transaction, in order: all of them or none."""
        ...

    async def claim_and_write(
        self, requests: Sequence[ClaimRequest], writes: Sequence[Write]
    ) -> ClaimsAndWrite:
        """`write(writes)` and `claim_many(requests)` as one operation of the store, each part
        failing alone. A claim may see an answer written beside it (replay) or not yet (in
        progress); either is what `claim` alone could have answered at that moment."""
        ...

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]: ...

    async def count_keys(self) -> dict[str, int]:
        """Idempotency rows kept, by scope (a whole-table count: for the periodic purge)."""

    async def probe(self) -> str | None:
        """Why the store cannot take writes now (for /readyz); None when it can."""
        ...
