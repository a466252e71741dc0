"""The service's store: SQLite by default, PostgreSQL when several processes share state."""

from __future__ import annotations

from pathlib import Path

from yarl import URL

from service.clock import SYSTEM_CLOCK, Clock
from service.store.base import Claim, ClaimOutcome, ClaimRequest, IdempotencyStore, Store, Write
from service.store.batching import WRITE_TIMEOUT_SECONDS, BatchWriter, WriterClosedError
from service.store.claims import ClaimBatcher
from service.store.coalescing import Coalescer
from service.store.faults import StoreCheck, StoreUnavailableError, describe, within
from service.store.marks_key import first_copy_key
from service.store.postgres import PostgresStore
from service.store.sql import Statements
from service.store.sqlite import SqliteStore

__all__ = [
    "WRITE_TIMEOUT_SECONDS",
    "BatchWriter",
    "Claim",
    "ClaimBatcher",
    "ClaimOutcome",
    "ClaimRequest",
    "Coalescer",
    "IdempotencyStore",
    "Statements",
    "Store",
    "StoreCheck",
    "StoreUnavailableError",
    "Write",
    "WriterClosedError",
    "describe",
    "first_copy_key",
    "open_store",
    "within",
]


async def open_store(url: str, *, clock: Clock = SYSTEM_CLOCK) -> Store:
    """Open (and create or migrate) the store named by CONVEYOR_STORE_URL."""
    parsed = URL(url)
    if parsed.scheme == "sqlite":
        # sqlite:///./var/conveyor.db is relative, sqlite:////abs/path.db absolute.
        return await SqliteStore.open(Path(url.removeprefix("sqlite:///")), clock=clock)
    return await PostgresStore.open(url, clock=clock)
