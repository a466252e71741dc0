"""The shared store for several conveyor processes: PostgreSQL through an asyncpg pool."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg

from service.clock import SYSTEM_CLOCK, Clock
from service.store.base import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    Write,
    check_distinct,
    purge_in_chunks,
    stored_claim,
)
from service.store.sql import (
    EXPIRING_TABLES,
    MIGRATIONS,
    Statements,
    by_statement,
    in_chunks,
    numbered,
)

__all__ = ["PostgresStore"]

_INSERT_CLAIM = numbered(Statements.insert_claim) + " RETURNING 1"
_SELECT_CLAIM = numbered(Statements.select_claim)
_RELEASE = numbered(Statements.release)
_MIGRATION_LOCK = 7311023
_numbered = functools.lru_cache(maxsize=64)(numbered)
_DEADLOCK_RETRIES = 3
_CLAIMS_PER_STATEMENT = 128  # five parameters each, far under PostgreSQL's 32,767
# Without these a half-open connection holds a claim or a delivery until TCP gives up.
_COMMAND_TIMEOUT_SECONDS = 10.0
# A count of the idempotency rows reads the whole table, which may outlast a single command.
_COUNT_TIMEOUT_SECONDS = 60.0
# Rows a purge deletes in one statement and transaction: tens of milliseconds of PostgreSQL's.
PURGE_CHUNK_ROWS = 10_000
# The expired rows of each table, the oldest first, a chunk at a time. In one DELETE a table, a
# purge of more than some 10 million rows (at the million rows a second measured on the
# development machine: after a lowered TTL, or a long stop) outlasted the statement timeout and
# was rolled back every time, so the tables never shrank; and for as long as it ran, a claim or
# a status write on a row it was deleting waited for it. Rows found through the expiry index,
# deleted by their tuple ids.
PURGE_CHUNKS = tuple(
    f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("  # noqa: S608 - our own table names
    f"SELECT ctid FROM {table} WHERE expires_at < $1 ORDER BY expires_at LIMIT $2))"
    for table in EXPIRING_TABLES
)


async def _fetch_retrying_deadlocks(
    connection: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], statement: str, *parameters: Any
) -> list[asyncpg.Record]:
    """One statement; a deadlock (PostgreSQL rolled the statement back) is tried again."""
    for attempt in range(_DEADLOCK_RETRIES + 1):
        try:
            return await connection.fetch(statement, *parameters)
        except asyncpg.exceptions.DeadlockDetectedError:
            if attempt == _DEADLOCK_RETRIES:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


async def _keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """What a connection needs before it goes back to the pool: nothing more than asyncpg's own
    clean-up (a transaction left open is rolled back either way).

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release: a round trip to PostgreSQL for each lookup, claim and status
    batch, 8 % of a worker's loop on PostgreSQL (issue 7). The store leaves nothing for it to
    undo: no session advisory lock (migrations take a transaction's), no cursor outside a
    transaction, no LISTEN, no SET (the search path is a connection parameter, not a SET).
    """
    del connection


def _row_key(row: tuple[Any, ...]) -> tuple[str, ...]:
    # The leading columns are the row's key in every status statement (event id, source, ...).
    return tuple(str(value) for value in row[:3])


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._pool = pool
        self._clock = clock  # expiry of claims and leases, and of what a purge deletes

    @classmethod
    async def open(cls, dsn: str, *, clock: Clock = SYSTEM_CLOCK) -> PostgresStore:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=10,
            command_timeout=_COMMAND_TIMEOUT_SECONDS,
            reset=_keep_session,
        )
        try:
            await _migrate(pool)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, clock=clock)

    async def claim(
        self, scope: str, key: str, fingerprint: str, *, owner: str, lease: float
    ) -> Claim:
        now = self._clock.now()
        async with self._pool.acquire(timeout=_COMMAND_TIMEOUT_SECONDS) as connection:
            inserted = await connection.fetchval(
                _INSERT_CLAIM, scope, key, fingerprint, owner, now + lease, now
            )
            if inserted == 1:
                return Claim(ClaimOutcome.OWNER)
            row = await connection.fetchrow(_SELECT_CLAIM, scope, key)
        if row is None:
            return await self.claim(scope, key, fingerprint, owner=owner, lease=lease)
        if row["fingerprint"] != fingerprint:
            return Claim(ClaimOutcome.CONFLICT)
        if row["status"] is None:
            return Claim(ClaimOutcome.IN_PROGRESS)
        return Claim(ClaimOutcome.REPLAY, int(row["status"]), bytes(row["body"]))

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        check_distinct(requests)
        now = self._clock.now()
        won: set[tuple[str, str]] = set()
        stored: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        # Keys in order, as in `write`: two processes claiming overlapping keys then lock their
        # rows in the same order instead of deadlocking.
        ordered = sorted(requests, key=lambda request: (request.scope, request.key))
        async with self._pool.acquire(timeout=_COMMAND_TIMEOUT_SECONDS) as connection:
            for chunk in in_chunks(ordered, _CLAIMS_PER_STATEMENT):
                parameters: list[Any] = []
                for request in chunk:
                    parameters += (
                        request.scope,
                        request.key,
                        request.fingerprint,
                        request.owner,
                        now + request.lease,
                    )
                statement = _numbered(Statements.insert_claims(len(chunk)))
                rows = await _fetch_retrying_deadlocks(connection, statement, *parameters, now)
                won.update((row["scope"], row["key"]) for row in rows)
            lost = [request for request in requests if (request.scope, request.key) not in won]
            for chunk in in_chunks(lost, _CLAIMS_PER_STATEMENT):
                keys = [value for request in chunk for value in (request.scope, request.key)]
                for row in await connection.fetch(
                    _numbered(Statements.select_claims(len(chunk))), *keys
                ):
                    stored[row["scope"], row["key"]] = (
                        row["fingerprint"],
                        row["status"],
                        row["body"],
                    )
        claims = []
        for request in requests:
            if (request.scope, request.key) in won:
                claims.append(Claim(ClaimOutcome.OWNER))
                continue
            claim = stored_claim(request.fingerprint, stored.get((request.scope, request.key)))
            if claim is None:
                claim = await self.claim(
                    request.scope,
                    request.key,
                    request.fingerprint,
                    owner=request.owner,
                    lease=request.lease,
                )
            claims.append(claim)
        return claims

    async def release(self, scope: str, key: str, owner: str) -> None:
        await self._pool.execute(_RELEASE, scope, key, owner)

    async def write(self, writes: Sequence[Write]) -> None:
        # Rows in key order: two processes writing overlapping rows then lock them in the same
        # order. Stable, so one row's updates keep their order. A deadlock that happens anyway
        # (another statement mix) is retried: PostgreSQL rolled the whole transaction back.
        groups = [
            (statement, sorted(rows, key=_row_key)) for statement, rows in by_statement(writes)
        ]
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                async with (
                    self._pool.acquire(timeout=_COMMAND_TIMEOUT_SECONDS) as connection,
                    connection.transaction(),
                ):
                    for statement, rows in groups:
                        await connection.executemany(_numbered(statement), rows)
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == _DEADLOCK_RETRIES:
                    raise
            else:
                return

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        rows = await self._pool.fetch(_numbered(statement), *params)
        return [tuple(row) for row in rows]

    async def count_keys(self) -> dict[str, int]:
        rows = await self._pool.fetch(Statements.count_keys, timeout=_COUNT_TIMEOUT_SECONDS)
        return {str(scope): int(count) for scope, count in rows}

    async def purge_expired(self) -> int:
        now, rows = self._clock.now(), PURGE_CHUNK_ROWS
        return await purge_in_chunks(
            PURGE_CHUNKS, rows, lambda statement: self._delete_chunk(statement, now, rows)
        )

    async def _delete_chunk(self, statement: str, now: float, rows: int) -> int:
        async with (
            self._pool.acquire(timeout=_COMMAND_TIMEOUT_SECONDS) as connection,
            connection.transaction(),
        ):
            # On tables without statistics PostgreSQL plans both halves of a chunk as scans of
            # the whole table: in chunks, a large purge would be quadratic. LOCAL: the setting
            # ends with the transaction.
            await connection.execute("SET LOCAL enable_seqscan = off")
            result = await connection.execute(
                statement, now, rows, timeout=_COMMAND_TIMEOUT_SECONDS
            )
        return int(result.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        await self._pool.close()


async def _migrate(pool: asyncpg.Pool) -> None:
    # Several processes may start at once; the advisory lock makes them migrate in turn.
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(Statements.create_version)
        done = await connection.fetchval(Statements.select_version)
        for migration in MIGRATIONS[done or 0 :]:
            for statement in migration:
                await connection.execute(statement)
        # A newer conveyor may have migrated further; its tables are a superset of ours.
        version = max(done or 0, len(MIGRATIONS))
        statement = Statements.insert_version if done is None else Statements.update_version
        await connection.execute(numbered(statement), version)
