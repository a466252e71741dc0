"""How many idempotency claims (claim + complete) the store takes per second, 64 at a time.

    .venv/bin/python bench/store_claims.py [postgresql://postgres@127.0.0.1/test]

Uses a temporary SQLite file and a temporary PostgreSQL schema, both removed afterwards.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid

import asyncpg

from service.store import Statements, open_store

CLAIMS = 2000
CONCURRENCY = 64


async def claims_per_second(url: str) -> float:
    store = await open_store(url)
    scope = f"bench-{uuid.uuid4().hex[:8]}"
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        async with slots:
            await store.claim(scope, str(index), "fingerprint", owner="bench", lease=60)
            # As the Deduplicator stores an answer (normally grouped with status writes).
            complete = (202, b"{}", time.time() + 60, scope, str(index), "bench")
            await store.write([(Statements.complete, complete)])

    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(CLAIMS)))
    elapsed = time.perf_counter() - started
    await store.close()
    return CLAIMS / elapsed


async def main(postgres: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        rate = await claims_per_second(f"sqlite:///{folder}/bench.db")
        print(f"sqlite      {rate:8.0f} claims/s")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        rate = await claims_per_second(f"{postgres}?search_path={schema}")
        print(f"postgresql  {rate:8.0f} claims/s")
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1/test"))
