"""The store's many-key lookups go through the primary key on both backends, whatever the
statistics say.

A consumer asks "did these events already succeed?" for every read of deliveries, and a batch
of events whose claims were not won asks for the stored answers. On PostgreSQL these ran as
joins, and a plan made while a table had no statistics (new, or grown since autovacuum last
analyzed it) scanned the whole table for each lookup: consume on PostgreSQL drained at a
quarter of its rate on SQLite, each lookup slower with every row stored (issue 7). PostgreSQL
keeps a prepared statement's generic plan once chosen, so these tests ask for the generic plan
on fresh, empty tables: the plan a worker starting on a new schema would keep.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from service.store import Statements, open_store
from service.store.postgres import PURGE_CHUNKS as POSTGRES_PURGE_CHUNKS
from service.store.sql import EXPIRING_TABLES, numbered

KEYS = 16


def _literal(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def _lookups() -> dict[str, tuple[str, str, list[object]]]:
    """Per lookup: its statement, the table it reads, parameters for `KEYS` keys."""
    succeeded: list[object] = []
    claims: list[object] = []
    for index in range(KEYS):
        succeeded += [f"id-{index}", "test-source", "test-subscription"]
        claims += ["event", f"key-{index}"]
    return {
        "succeeded among": (
            Statements.select_succeeded_among(KEYS),
            "conveyor_deliveries",
            [*succeeded, time.time() - 3600],
        ),
        "stored claims": (Statements.select_claims(KEYS), "conveyor_idempotency", claims),
    }


@contextlib.asynccontextmanager
async def _new_tables(postgres_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A connection to the store's tables, created and never analyzed, that plans every
    prepared statement generically: the plan PostgreSQL may keep for a store's statements."""
    store = await open_store(postgres_url)
    await store.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        yield connection
    finally:
        await connection.close()


async def _plan(
    connection: asyncpg.Connection[asyncpg.Record],
    handle: str,
    statement: str,
    parameters: list[object],
) -> str:
    await connection.execute(f"PREPARE {handle} AS {statement}")
    arguments = ", ".join(_literal(value) for value in parameters)
    rows = await connection.fetch(f"EXPLAIN EXECUTE {handle}({arguments})")
    return "\n".join(row[0] for row in rows)


async def test_postgresql_plans_each_lookup_through_the_primary_key_on_new_tables(
    postgres_url: str,
) -> None:
    async with _new_tables(postgres_url) as connection:
        for name, (statement, table, parameters) in _lookups().items():
            plan = await _plan(connection, name.replace(" ", "_"), numbered(statement), parameters)
            assert f"Index Scan using {table}_pkey on {table}" in plan, (name, plan)
            assert "Seq Scan" not in plan, (name, plan)


async def test_postgresql_purges_through_the_expiry_index_on_new_tables(postgres_url: str) -> None:
    """Each chunk of the purge finds the oldest expired rows through the expiry index and
    deletes them by tuple id, as the store runs it (`enable_seqscan` off for its transaction):
    a scan from the table's start would pass over the dead rows of every earlier chunk."""
    async with _new_tables(postgres_url) as connection:
        for table, statement in zip(EXPIRING_TABLES, POSTGRES_PURGE_CHUNKS, strict=True):
            async with connection.transaction():
                await connection.execute("SET LOCAL enable_seqscan = off")
                plan = await _plan(connection, f"purge_{table}", statement, [time.time(), 500])
            assert f"Index Scan using {table}_expiry on {table}" in plan, plan
            assert f"Tid Scan on {table}" in plan, plan
            assert "Seq Scan" not in plan, plan


async def test_sqlite_plans_each_lookup_through_the_primary_key(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"
    store = await open_store(f"sqlite:///{path}")
    await store.close()
    connection = sqlite3.connect(path)
    try:
        for name, (statement, table, parameters) in _lookups().items():
            explained = connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            steps = [str(row[3]) for row in explained]
            # SQLite names the table by its alias in the statement, `d` or `c` (before 3.36 as
            # `TABLE <name> AS d`).
            reads = [
                step for step in steps if re.match(r"(SCAN|SEARCH) (TABLE \w+ AS )?[cd]\b", step)
            ]
            assert reads, (name, table, steps)
            assert all(
                step.startswith("SEARCH") and f"USING INDEX sqlite_autoindex_{table}" in step
                for step in reads
            ), (name, steps)
    finally:
        connection.close()
