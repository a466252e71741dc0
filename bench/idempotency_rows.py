"""What one kept Idempotency-Key costs in the store: bytes of table and indexes per row.

    .venv/bin/python bench/idempotency_rows.py [postgresql://postgres@127.0.0.1/test]

Stores ROWS keys the way a request with `Idempotency-Key` does (a claim, then its answer: status
202 and the single event's `{"id", "location"}` body), then reads the size of
`conveyor_idempotency` with its indexes: SQLite's dbstat, PostgreSQL's pg_total_relation_size
(before and after a VACUUM: each answer is an UPDATE of the claim, whose old version stays
until autovacuum comes by). Uses a temporary SQLite file and a temporary PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import orjson

from service.http.idempotency import check_key
from service.store import Statements, open_store

ROWS = 20_000
CONCURRENCY = 64
SCOPE = "request"  # the scope of Idempotency-Key rows
_SQLITE_SIZE = (
    "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('conveyor_idempotency', "
    "'sqlite_autoindex_conveyor_idempotency_1', 'conveyor_idempotency_expiry')"
)


async def store_keys(url: str) -> None:
    store = await open_store(url)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        key = check_key(str(uuid.uuid4()))  # a client's typical key: a UUID
        event_id = str(uuid.uuid4())
        fingerprint = hashlib.sha256(event_id.encode()).hexdigest()
        owner = uuid.uuid4().hex
        body = orjson.dumps({"id": event_id, "location": f"/v1/events/{event_id}"})
        async with slots:
            await store.claim(SCOPE, key, fingerprint, owner=owner, lease=120)
            complete = (202, body, time.time() + 86_400, SCOPE, key, owner)
            await store.write([(Statements.complete, complete)])

    await asyncio.gather(*(one() for _ in range(ROWS)))
    await store.close()


async def sqlite_bytes_per_row(path: Path) -> float:
    await store_keys(f"sqlite:///{path}")
    import sqlite3  # noqa: PLC0415 - only here, for dbstat

    with sqlite3.connect(path) as connection:
        (size,) = connection.execute(_SQLITE_SIZE).fetchone()
    return int(size) / ROWS


async def postgres_bytes_per_row(postgres: str) -> tuple[float, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres)
    await admin.execute(f"CREATE SCHEMA {schema}")
    size = f"SELECT pg_total_relation_size('{schema}.conveyor_idempotency')"
    try:
        await store_keys(f"{postgres}?search_path={schema}")
        before = await admin.fetchval(size)
        await admin.execute(f"VACUUM {schema}.conveyor_idempotency")
        after = await admin.fetchval(size)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    return before / ROWS, after / ROWS


async def main(postgres: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        per_row = await sqlite_bytes_per_row(Path(folder) / "rows.db")
    print(f"sqlite      {per_row:6.0f} bytes per key ({ROWS} keys, table and indexes, dbstat)")
    before, after = await postgres_bytes_per_row(postgres)
    print(
        f"postgresql  {before:6.0f} bytes per key before VACUUM, {after:.0f} after "
        f"({ROWS} keys, pg_total_relation_size)"
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1/test"))
