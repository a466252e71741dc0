"""The shared store for several conveyor processes: PostgreSQL through an asyncpg pool."""

from __future__ import annotations

import time

import asyncpg

from service.store.base import Claim, ClaimOutcome
from service.store.sql import SCHEMA, Statements, numbered

__all__ = ["PostgresStore"]

_INSERT_CLAIM = numbered(Statements.insert_claim) + " RETURNING 1"
_SELECT_CLAIM = numbered(Statements.select_claim)
_COMPLETE = numbered(Statements.complete)
_RELEASE = numbered(Statements.release)
_PURGE = numbered(Statements.purge)


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        # Several processes may start at once; serialise the schema creation.
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(7311023)")
            for statement in SCHEMA:
                await connection.execute(statement)
        return cls(pool)

    async def claim(self, scope: str, key: str, fingerprint: str, ttl: float) -> Claim:
        now = time.time()
        async with self._pool.acquire() as connection:
            inserted = await connection.fetchval(
                _INSERT_CLAIM, scope, key, fingerprint, now + ttl, now
            )
            if inserted == 1:
                return Claim(ClaimOutcome.OWNER)
            row = await connection.fetchrow(_SELECT_CLAIM, scope, key)
        if row is None:
            return await self.claim(scope, key, fingerprint, ttl)
        if row["fingerprint"] != fingerprint:
            return Claim(ClaimOutcome.CONFLICT)
        if row["status"] is None:
            return Claim(ClaimOutcome.IN_PROGRESS)
        return Claim(ClaimOutcome.REPLAY, int(row["status"]), bytes(row["body"]))

    async def complete(self, scope: str, key: str, status: int, body: bytes) -> None:
        await self._pool.execute(_COMPLETE, status, body, scope, key)

    async def release(self, scope: str, key: str) -> None:
        await self._pool.execute(_RELEASE, scope, key)

    async def purge_expired(self) -> int:
        result = await self._pool.execute(_PURGE, time.time())
        return int(result.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        await self._pool.close()
