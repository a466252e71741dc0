"""The embedded store: one SQLite file through aiosqlite.

Two connections, each with its own thread: one for claims and reads, one for batched status
writes. A batch runs in a transaction of its own, so a claim never lands inside someone else's
batch (and is never rolled back with it). WAL lets them read while the other writes; the busy
timeout makes the two writers take turns instead of failing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from service.store.base import Claim, ClaimOutcome, Write
from service.store.sql import MIGRATIONS, Statements

__all__ = ["SqliteStore"]

_BUSY_TIMEOUT_MS = 10_000


async def _connect(path: Path) -> aiosqlite.Connection:
    connection = await aiosqlite.connect(path, isolation_level=None)  # autocommit
    # WAL lets readers go on while the writer writes; NORMAL sync is durable across a
    # process crash (the case idempotency must survive), not across power loss.
    await connection.execute("PRAGMA journal_mode=WAL")
    await connection.execute("PRAGMA synchronous=NORMAL")
    await connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return connection


class SqliteStore:
    def __init__(self, connection: aiosqlite.Connection, batches: aiosqlite.Connection) -> None:
        self._db = connection
        self._batches = batches

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await _connect(path)
        await _migrate(connection)
        return cls(connection, await _connect(path))

    async def claim(self, scope: str, key: str, fingerprint: str, ttl: float) -> Claim:
        now = time.time()
        cursor = await self._db.execute(
            Statements.insert_claim, (scope, key, fingerprint, now + ttl, now)
        )
        if cursor.rowcount == 1:
            return Claim(ClaimOutcome.OWNER)
        async with self._db.execute(Statements.select_claim, (scope, key)) as rows:
            row = await rows.fetchone()
        if row is None:  # released between our insert and select: try once more
            return await self.claim(scope, key, fingerprint, ttl)
        stored_fingerprint, status, body = row
        if stored_fingerprint != fingerprint:
            return Claim(ClaimOutcome.CONFLICT)
        if status is None:
            return Claim(ClaimOutcome.IN_PROGRESS)
        return Claim(ClaimOutcome.REPLAY, int(status), bytes(body))

    async def complete(self, scope: str, key: str, status: int, body: bytes) -> None:
        await self._db.execute(Statements.complete, (status, body, scope, key))

    async def release(self, scope: str, key: str) -> None:
        await self._db.execute(Statements.release, (scope, key))

    async def write(self, writes: Sequence[Write]) -> None:
        await self._batches.execute("BEGIN IMMEDIATE")
        try:
            # Runs of one statement go to the thread in one call.
            for statement, group in itertools.groupby(writes, key=lambda write: write[0]):
                await self._batches.executemany(statement, [params for _, params in group])
        except BaseException:
            await self._batches.execute("ROLLBACK")
            raise
        await self._batches.execute("COMMIT")

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        async with self._db.execute(statement, params) as rows:
            return [tuple(row) for row in await rows.fetchall()]

    async def purge_expired(self) -> int:
        now = time.time()
        purged = 0
        for statement in Statements.purge:
            cursor = await self._db.execute(statement, (now,))
            purged += cursor.rowcount
        return purged

    async def close(self) -> None:
        await self._batches.close()
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
