"""The shared store for several conveyor processes: PostgreSQL through an asyncpg pool."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from service.clock import SYSTEM_CLOCK, Clock
from service.store.base import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    ClaimsAndWrite,
    Write,
    check_distinct,
    purge_in_chunks,
    stored_claim,
)
from service.store.faults import StoreUnavailableError, describe
from service.store.sql import (
    EXPIRING_TABLES,
    MIGRATIONS,
    Statements,
    by_statement,
    in_chunks,
    numbered,
)

__all__ = ["PostgresStore"]

_INSERT_CLAIM = numbered(Statements.insert_claim) + " RETURNING earlier_attempt"
_SELECT_CLAIM = numbered(Statements.select_claim)
_RELEASE = numbered(Statements.release)
_MIGRATION_LOCK = 7311023
_numbered = functools.lru_cache(maxsize=64)(numbered)
_DEADLOCK_RETRIES = 3
# A connection whose server went away (its backend terminated, the server restarting, the
# network cut) or whose protocol broke mid-operation: it is closed, never handed out again,
# and an operation safe to repeat goes again on a new one, this many times more.
_BROKEN = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # terminated, crash or admin shutdown
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)
_BROKEN_RETRIES = 2
# What else says the server cannot take the operation now, rather than that it is wrong.
_UNAVAILABLE = (
    *_BROKEN,
    asyncpg.exceptions.InsufficientResourcesError,  # disk full, too many connections
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
_PROBE = numbered(Statements.probe)
_PROBE_TTL = 60.0  # the probe's row is purged with the expired claims
_OWNER = Claim(ClaimOutcome.OWNER)
_FIRST_OWNER = Claim(ClaimOutcome.OWNER, first=True)
_T = TypeVar("_T")
if TYPE_CHECKING:  # generic for the type checker only
    _Connection = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
_CLAIMS_PER_STATEMENT = 128  # five parameters each, far under PostgreSQL's 32,767
# Without these a half-open connection holds a claim or a delivery until TCP gives up.
_COMMAND_TIMEOUT_SECONDS = 10.0
# A count of the idempotency rows reads the whole table, which may outlast a single command.
_COUNT_TIMEOUT_SECONDS = 60.0
# Rows a purge deletes in one statement and transaction: tens of milliseconds of PostgreSQL's.
PURGE_CHUNK_ROWS = 10_000
# The expired rows of each table, the oldest first, a chunk at a time. In one DELETE a table, a
# large purge (after a lowered TTL, or a long stop) could outlast the statement timeout and be
# rolled back every time, so the tables never shrank; and for as long as it ran, a claim or a
# status write on a row it was deleting waited for it. Rows found through the expiry index,
# deleted by their tuple ids.
PURGE_CHUNKS = tuple(
    f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("  # noqa: S608 - our own table names
    f"SELECT ctid FROM {table} WHERE expires_at < $1 ORDER BY expires_at LIMIT $2))"
    for table in EXPIRING_TABLES
)


async def _fetch_retrying_deadlocks(
    connection: _Connection, statement: str, *parameters: Any
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
    batch. The store leaves nothing for it to
    undo: no session advisory lock (migrations take a transaction's), no cursor outside a
    transaction, no LISTEN, no SET (the search path is a connection parameter, not a SET).
    """
    del connection


def _row_key(row: tuple[Any, ...]) -> tuple[str, ...]:
    # The leading columns are the row's key in every status statement (event id, source, ...).
    return tuple(str(value) for value in row[:3])


class PostgresStore:
    serial = False  # a pool of connections: operations run side by side

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

        async def take(connection: _Connection) -> Claim | None:
            # The row written: 0 when it is new, 1 when it took over an earlier claim; none
            # when the key is held.
            written = await connection.fetchrow(
                _INSERT_CLAIM, scope, key, fingerprint, owner, now + lease, now
            )
            if written is not None:
                return _OWNER if written["earlier_attempt"] else _FIRST_OWNER
            row = await connection.fetchrow(_SELECT_CLAIM, scope, key)
            found = None if row is None else (row["fingerprint"], row["status"], row["body"])
            return stored_claim(fingerprint, found)

        # Not repeated on a broken connection: a claim that was taken before the connection
        # broke would read as in progress, held by this very claimer.
        claim = await self._use(take, attempts=1)
        if claim is None:  # released between our insert and select: try again
            return await self.claim(scope, key, fingerprint, owner=owner, lease=lease)
        return claim

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        check_distinct(requests)
        now = self._clock.now()
        won: dict[tuple[str, str], bool] = {}  # claimed keys: whether an earlier claim came before
        stored: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        # Keys in order, as in `write`: two processes claiming overlapping keys then lock their
        # rows in the same order instead of deadlocking.
        ordered = sorted(requests, key=lambda request: (request.scope, request.key))

        async def take(connection: _Connection) -> None:
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
                won.update(
                    ((row["scope"], row["key"]), bool(row["earlier_attempt"])) for row in rows
                )
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

        await self._use(take, attempts=1)  # not repeated, as in `claim`
        claims = []
        for request in requests:
            earlier = won.get((request.scope, request.key))
            if earlier is not None:
                claims.append(_OWNER if earlier else _FIRST_OWNER)
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

    async def claim_and_write(
        self, requests: Sequence[ClaimRequest], writes: Sequence[Write]
    ) -> ClaimsAndWrite:
        if not writes:
            try:
                return ClaimsAndWrite(await self.claim_many(requests), None)
            except Exception as error:  # noqa: BLE001 - the claims' outcome, handed back
                return ClaimsAndWrite(error, None)
        # Side by side, each on a connection of its own: one waits for the slower of the two,
        # not for both in a row, and a connection that breaks under one leaves the other.
        claims, written = await asyncio.gather(
            self.claim_many(requests), self.write(writes), return_exceptions=True
        )
        if isinstance(claims, BaseException) and not isinstance(claims, Exception):
            raise claims  # a cancellation
        if isinstance(written, BaseException) and not isinstance(written, Exception):
            raise written
        return ClaimsAndWrite(claims, written)

    async def release(self, scope: str, key: str, owner: str, *, remember: float) -> None:
        expires_at = self._clock.now() + remember
        await self._use(
            lambda connection: connection.execute(_RELEASE, expires_at, scope, key, owner)
        )

    async def _use(
        self,
        work: Callable[[_Connection], Awaitable[_T]],
        *,
        attempts: int = 1 + _BROKEN_RETRIES,
        transaction: bool = False,
    ) -> _T:
        """`work` on a pooled connection (in a transaction of its own if asked), again on a new
        connection when one breaks, up to `attempts` times in all. The store's failures that
        say it cannot work now become `StoreUnavailableError`."""
        for attempt in range(1, attempts + 1):
            try:
                async with self._pool.acquire(timeout=_COMMAND_TIMEOUT_SECONDS) as connection:
                    try:
                        if not transaction:
                            return await work(connection)
                        async with connection.transaction():
                            return await work(connection)
                    except TimeoutError:  # an OSError, yet the connection is whole
                        raise
                    except _BROKEN:
                        # Closed here: a connection left mid-operation must not go back to
                        # the pool ("cannot switch to state ...; another operation is in
                        # progress" for whoever gets it next). One that closed itself is
                        # already out of the pool.
                        with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                            connection.terminate()
                        # Whatever cut this one (a restart, terminated backends) may have cut
                        # the idle ones too, unnoticed yet: each is replaced when next taken,
                        # so the next attempt runs on a new connection.
                        await self._pool.expire_connections()
                        raise
            except TimeoutError as error:  # no answer in time: not tried again
                raise StoreUnavailableError(f"PostgreSQL: {describe(error)}") from error
            except _BROKEN as error:
                if attempt == attempts:
                    raise StoreUnavailableError(f"PostgreSQL: {describe(error)}") from error
            except _UNAVAILABLE as error:
                raise StoreUnavailableError(f"PostgreSQL: {describe(error)}") from error
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def write(self, writes: Sequence[Write]) -> None:
        # Rows in key order: two processes writing overlapping rows then lock them in the same
        # order. Stable, so one row's updates keep their order. A deadlock that happens anyway
        # (another statement mix) is retried: PostgreSQL rolled the whole transaction back.
        groups = [
            (statement, sorted(rows, key=_row_key)) for statement, rows in by_statement(writes)
        ]
        # A write whose connection broke goes again on a new one (`_use`): it may have been
        # committed already, and applying it twice leaves the same rows (every status statement
        # is an upsert that keeps the furthest state, or an update to the same values).

        async def apply(connection: _Connection) -> None:
            for statement, rows in groups:
                await connection.executemany(_numbered(statement), rows)

        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                await self._use(apply, transaction=True)
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == _DEADLOCK_RETRIES:
                    raise
            else:
                return

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        rows = await self._use(lambda connection: connection.fetch(_numbered(statement), *params))
        return [tuple(row) for row in rows]

    async def count_keys(self) -> dict[str, int]:
        rows = await self._pool.fetch(Statements.count_keys, timeout=_COUNT_TIMEOUT_SECONDS)
        return {str(scope): int(count) for scope, count in rows}

    async def probe(self) -> str | None:
        """Why the store cannot take writes now (None: it can): no connection, or a write
        refused (a read-only server or standby, a full disk)."""
        expires_at = self._clock.now() + _PROBE_TTL
        try:
            await self._use(lambda connection: connection.execute(_PROBE, expires_at))
        except StoreUnavailableError as error:
            return describe(error)
        return None

    async def purge_expired(self) -> int:
        now, rows = self._clock.now(), PURGE_CHUNK_ROWS
        return await purge_in_chunks(
            PURGE_CHUNKS, rows, lambda statement: self._delete_chunk(statement, now, rows)
        )

    async def _delete_chunk(self, statement: str, now: float, rows: int) -> int:
        async def delete(connection: _Connection) -> str:
            # On tables without statistics PostgreSQL plans both halves of a chunk as scans of
            # the whole table: in chunks, a large purge would be quadratic. LOCAL: the setting
            # ends with the transaction.
            await connection.execute("SET LOCAL enable_seqscan = off")
            return await connection.execute(statement, now, rows, timeout=_COMMAND_TIMEOUT_SECONDS)

        result = await self._use(delete, transaction=True)
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
