"""The embedded store: one SQLite file through aiosqlite (a single writer thread)."""

from __future__ import annotations

import time
from pathlib import Path

import aiosqlite

from service.store.base import Claim, ClaimOutcome
from service.store.sql import SCHEMA, Statements

__all__ = ["SqliteStore"]


class SqliteStore:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)  # autocommit
        # WAL lets readers go on while the writer writes; NORMAL sync is durable across a
        # process crash (the case idempotency must survive), not across power loss.
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            await connection.execute(statement.replace("BYTEA", "BLOB"))
        return cls(connection)

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

    async def purge_expired(self) -> int:
        cursor = await self._db.execute(Statements.purge, (time.time(),))
        return cursor.rowcount

    async def close(self) -> None:
        await self._db.close()
