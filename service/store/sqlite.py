"""The embedded store: one SQLite file through aiosqlite (one connection, one thread).

Status writes come in batches, each in a transaction of its own. Claims and releases wait while
a batch runs (the lock), so a claim never lands inside a batch's transaction or is rolled back
with it. One connection, not two: two writers on one file would take turns through SQLite's
busy handler, which sleeps, and cost far more than waiting for the lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from service.store.base import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    Write,
    check_distinct,
    stored_claim,
)
from service.store.sql import MIGRATIONS, Statements, by_statement, in_chunks

__all__ = ["SqliteStore"]

_BUSY_TIMEOUT_MS = 10_000  # another process on the same file (a second conveyor, a migration)
# Claims per statement: five parameters each stays under 999, SQLite's limit before 3.32.
_CLAIMS_PER_STATEMENT = 128
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)  # INSERT ... RETURNING, for claim_many


class SqliteStore:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)  # autocommit
        # WAL lets readers go on while the writer writes; NORMAL sync is durable across a
        # process crash (the case idempotency must survive), not across power loss.
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=NORMAL")
        await connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        await _migrate(connection)
        return cls(connection)

    async def claim(
        self, scope: str, key: str, fingerprint: str, *, owner: str, lease: float
    ) -> Claim:
        now = time.time()
        async with self._lock:
            cursor = await self._db.execute(
                Statements.insert_claim, (scope, key, fingerprint, owner, now + lease, now)
            )
            if cursor.rowcount == 1:
                return Claim(ClaimOutcome.OWNER)
            async with self._db.execute(Statements.select_claim, (scope, key)) as rows:
                row = await rows.fetchone()
        if row is None:  # released between our insert and select: try once more
            return await self.claim(scope, key, fingerprint, owner=owner, lease=lease)
        stored_fingerprint, status, body = row
        if stored_fingerprint != fingerprint:
            return Claim(ClaimOutcome.CONFLICT)
        if status is None:
            return Claim(ClaimOutcome.IN_PROGRESS)
        return Claim(ClaimOutcome.REPLAY, int(status), bytes(body))

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        check_distinct(requests)
        if not _RETURNING:  # an older SQLite: one claim at a time
            return [await self._claim(request) for request in requests]
        now = time.time()
        won: set[tuple[str, str]] = set()
        stored: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        async with self._lock:
            for chunk in in_chunks(requests, _CLAIMS_PER_STATEMENT):
                parameters = [
                    value
                    for request in chunk
                    for value in (
                        request.scope,
                        request.key,
                        request.fingerprint,
                        request.owner,
                        now + request.lease,
                    )
                ]
                parameters.append(now)
                statement = Statements.insert_claims(len(chunk))
                # execute_fetchall: one hand-off to SQLite's thread, where execute, fetchall and
                # close take three (a cost per request on the ingest path, issue 7).
                rows = await self._db.execute_fetchall(statement, parameters)
                won.update((scope, key) for scope, key in rows)
            lost = [request for request in requests if (request.scope, request.key) not in won]
            for chunk in in_chunks(lost, _CLAIMS_PER_STATEMENT):
                keys = [value for request in chunk for value in (request.scope, request.key)]
                statement = Statements.select_claims(len(chunk))
                for scope, key, *row in await self._db.execute_fetchall(statement, keys):
                    stored[scope, key] = (row[0], row[1], row[2])
        claims = []
        for request in requests:
            if (request.scope, request.key) in won:
                claims.append(Claim(ClaimOutcome.OWNER))
            else:
                claim = stored_claim(request.fingerprint, stored.get((request.scope, request.key)))
                claims.append(claim if claim is not None else await self._claim(request))
        return claims

    async def _claim(self, request: ClaimRequest) -> Claim:
        return await self.claim(
            request.scope,
            request.key,
            request.fingerprint,
            owner=request.owner,
            lease=request.lease,
        )

    async def release(self, scope: str, key: str, owner: str) -> None:
        async with self._lock:
            await self._db.execute(Statements.release, (scope, key, owner))

    async def write(self, writes: Sequence[Write]) -> None:
        # Shielded: a caller's timeout or cancellation must not leave the connection inside an
        # open transaction (aiosqlite would still run the BEGIN in its thread); the transaction
        # then finishes, or rolls back, on its own.
        await asyncio.shield(self._transaction(writes))

    async def _transaction(self, writes: Sequence[Write]) -> None:
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                for statement, rows in by_statement(writes):
                    await self._db.executemany(statement, rows)
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        # Under the lock: a read inside a running batch would see rows not yet committed.
        async with self._lock:
            return [tuple(row) for row in await self._db.execute_fetchall(statement, params)]

    async def purge_expired(self) -> int:
        now = time.time()
        purged = 0
        async with self._lock:
            for statement in Statements.purge:
                cursor = await self._db.execute(statement, (now,))
                purged += cursor.rowcount
        return purged

    async def close(self) -> None:
        await self._db.close()


async def _migrate(connection: aiosqlite.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock first, so two processes starting on one file
    # migrate one after the other.
    await connection.execute("BEGIN IMMEDIATE")
    try:
        await connection.execute(Statements.create_version)
        async with connection.execute(Statements.select_version) as rows:
            row = await rows.fetchone()
        done = 0 if row is None else int(row[0])
        for migration in MIGRATIONS[done:]:
            for statement in migration:
                await connection.execute(statement.replace("BYTEA", "BLOB"))
        # A newer conveyor may have migrated further; its tables are a superset of ours.
        version = max(done, len(MIGRATIONS))
        statement = Statements.insert_version if row is None else Statements.update_version
        await connection.execute(statement, (version,))
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")
