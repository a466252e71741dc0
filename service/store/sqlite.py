"""The embedded store: one SQLite file, written through one connection in a thread of its own.

Each write (a claim, a batch of status writes in its transaction) is one function run in that
thread: one hand-off from the event loop and one back, however many statements it takes (issue
7: a hand-off per statement, as through aiosqlite, cost the consumer a turn of a busy loop each,
and the lookups queued behind them). The thread runs operations one at a time,
in the order they were asked for, so a claim never lands inside a batch's transaction or is
rolled back with it. One writing connection, not two: two writers on one file would take turns
through SQLite's busy handler, which sleeps, and cost far more than waiting in line.

Queries (the consumers' "did this succeed here already?" lookups, the status API's reads) run on
the event loop itself, over a read-only connection of their own. In WAL mode a reader
never waits for the writer and sees only committed rows, and a batch of lookups takes tens of
microseconds: cheaper than the hand-off to the thread and back, which behind the thread's
transactions made each lookup wait several milliseconds while the delivery held its prefetch
slot. Should a read meet a busy database after all (a recovery, another process's checkpoint),
it waits at most `_READ_BUSY_TIMEOUT_MS` and is then asked again in the thread.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
from service.store.sql import EXPIRING_TABLES, MIGRATIONS, Statements, by_statement, in_chunks

__all__ = ["SqliteStore"]

_BUSY_TIMEOUT_MS = 10_000  # another process on the same file (a second conveyor, a migration)
_READ_BUSY_TIMEOUT_MS = 50  # on the event loop: a short wait, then the thread
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL}
# Failures of the file, not of a statement: another process holds it, it cannot be written, the
# disk is full or failing. They pass once the fault does; the caller may try again later.
_UNAVAILABLE_CODES = _BUSY_CODES | {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
}
# Less free space than this reads as a full disk: a write that only reuses the write-ahead
# log's pages would not notice it, the next one that grows the log fails.
MIN_FREE_BYTES = 1024 * 1024
_PROBE_TTL = 60.0  # the probe's row is purged with the expired claims
# Claims per statement: five parameters each stays under 999, SQLite's limit before 3.32.
_CLAIMS_PER_STATEMENT = 128
# Rows a purge deletes in one operation of the thread: a few milliseconds of it.
PURGE_CHUNK_ROWS = 500
# The expired rows of each table, a chunk at a time: their rowids through the expiry index.
_PURGE_CHUNKS = tuple(
    f"DELETE FROM {table} WHERE rowid IN "  # noqa: S608 - our own table names
    f"(SELECT rowid FROM {table} WHERE expires_at < ? LIMIT ?)"
    for table in EXPIRING_TABLES
)
_T = TypeVar("_T")
_OWNER = Claim(ClaimOutcome.OWNER)
_FIRST_OWNER = Claim(ClaimOutcome.OWNER, first=True)


class SqliteStore:
    serial = True  # one connection, one thread: operations wait in line

    def __init__(
        self,
        thread: ThreadPoolExecutor,
        connection: sqlite3.Connection,
        reader: sqlite3.Connection,
        path: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._thread = thread  # one worker: the only one to touch `connection`
        self._db = connection
        self._reader = reader  # read-only, used on the event loop's thread only
        self._closed = False
        self._clock = clock  # expiry of claims and leases, and of what a purge deletes
        self._path = path.resolve()
        # The file opened: one deleted or replaced meanwhile is no longer where writes go.
        self._file = _identity(self._path)

    @classmethod
    async def open(cls, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-sqlite")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(thread, _connect, path)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        try:
            reader = _connect_reader(path)  # after _connect: the file exists and is migrated
        except BaseException:
            await loop.run_in_executor(thread, connection.close)
            thread.shutdown(wait=False)
            raise
        return cls(thread, connection, reader, path, clock=clock)

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        # Shielded: a caller's timeout or cancellation cannot stop a function the thread runs
        # already; the transaction then finishes, or rolls back, on its own.
        call = functools.partial(function, *args)
        try:
            return await asyncio.shield(
                asyncio.get_running_loop().run_in_executor(self._thread, call)
            )
        except sqlite3.OperationalError as error:
            unavailable = _as_unavailable(error)
            if unavailable is error:
                raise
            raise unavailable from error

    async def claim(
        self, scope: str, key: str, fingerprint: str, *, owner: str, lease: float
    ) -> Claim:
        return await self._run(self._claim_now, ClaimRequest(scope, key, fingerprint, owner, lease))

    def _claim_now(self, request: ClaimRequest) -> Claim:
        while True:
            now = self._clock.now()
            values = (request.scope, request.key, request.fingerprint, request.owner,
                      now + request.lease)  # fmt: skip
            if self._db.execute(Statements.insert_new_claims(1), values).rowcount == 1:
                return _FIRST_OWNER
            if self._db.execute(Statements.insert_claim, (*values, now)).rowcount == 1:
                return _OWNER  # took over an expired or released claim
            row = self._db.execute(Statements.select_claim, (request.scope, request.key)).fetchone()
            claim = stored_claim(request.fingerprint, row)
            if claim is not None:
                return claim
            # Released between our insert and select (another process): try once more.

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        check_distinct(requests)
        return await self._run(self._claim_many_now, requests)

    def _claim_many_now(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        now = self._clock.now()
        claims: list[Claim | None] = []  # in the order of `requests`, as the chunks come
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
            new = self._db.execute(Statements.insert_new_claims(len(chunk)), parameters)
            if new.rowcount == len(chunk):
                # Every key was new, the usual case: all claimed first, known from the row
                # count alone. RETURNING the keys made SQLite hand back a row per key, each a
                # step that lets go of the GIL and waits to get it back.
                claims += [_FIRST_OWNER] * len(chunk)
                continue
            # Some keys had rows: those expired or released are taken over now. A row either
            # statement wrote holds the claimer's owner and the very expiry written for it: a
            # key held before, even by the same owner (which `Deduplicator` never does, owners
            # being new to each call), keeps its own expiry and reads as what it is, as `claim`
            # alone would answer.
            parameters.append(now)
            statement = Statements.insert_claims(len(chunk), returning=False)
            self._db.execute(statement, parameters)
            keys = [value for request in chunk for value in (request.scope, request.key)]
            rows = self._db.execute(Statements.select_claims(len(chunk)), keys).fetchall()
            stored = {(row[0], row[1]): row[2:] for row in rows}
            for request in chunk:
                fingerprint, status, body, owner, expires_at, earlier = stored[
                    request.scope, request.key
                ]
                written = owner == request.owner and expires_at == now + request.lease
                if written:
                    claims.append(_OWNER if earlier else _FIRST_OWNER)
                else:
                    claims.append(stored_claim(request.fingerprint, (fingerprint, status, body)))
        # None: released between our insert and select (another process): try again.
        return [
            claim if claim is not None else self._claim_now(request)
            for request, claim in zip(requests, claims, strict=True)
        ]

    async def claim_and_write(
        self, requests: Sequence[ClaimRequest], writes: Sequence[Write]
    ) -> ClaimsAndWrite:
        # One hand-off to the thread and back for both, instead of one each.
        check_distinct(requests)
        return await self._run(self._claim_and_write_now, requests, writes)

    def _claim_and_write_now(
        self, requests: Sequence[ClaimRequest], writes: Sequence[Write]
    ) -> ClaimsAndWrite:
        # The writes first, in their transaction: a claim then sees an answer stored beside it.
        # Each part fails alone: a rolled-back batch leaves the claims their own statements.
        write_error: Exception | None = None
        if writes:
            try:
                self._transaction(writes)
            except Exception as error:  # noqa: BLE001 - the writes' outcome, handed back
                write_error = _as_unavailable(error)
        claims: list[Claim] | Exception
        try:
            claims = self._claim_many_now(requests)
        except Exception as error:  # noqa: BLE001 - the claims' outcome, handed back
            claims = _as_unavailable(error)
        return ClaimsAndWrite(claims, write_error)

    async def release(self, scope: str, key: str, owner: str, *, remember: float) -> None:
        expires_at = self._clock.now() + remember
        await self._run(self._db.execute, Statements.release, (expires_at, scope, key, owner))

    async def write(self, writes: Sequence[Write]) -> None:
        await self._run(self._transaction, writes)

    def _transaction(self, writes: Sequence[Write]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for statement, rows in by_statement(writes):
                self._db.executemany(statement, rows)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        # On the loop, over the read-only connection (see the module docstring); committed rows
        # only, as in the thread between transactions.
        if self._closed:
            raise sqlite3.ProgrammingError("the store is closed")
        try:
            return _rows(self._reader, statement, params)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF not in _BUSY_CODES:  # the primary code
                raise
        return await self._run(self._query_now, statement, params)

    def _query_now(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return _rows(self._db, statement, params)

    async def count_keys(self) -> dict[str, int]:
        # A scan of the whole table: neither on the loop nor in the writer's thread, but in a
        # thread over a read-only connection of its own (in WAL mode the writer goes on).
        if self._closed:
            raise sqlite3.ProgrammingError("the store is closed")
        return dict(await asyncio.to_thread(_count_keys, self._path))

    async def purge_expired(self) -> int:
        """Delete expired rows, `PURGE_CHUNK_ROWS` at a time, each chunk an operation of its own
        in the thread: claims and status writes asked for meanwhile go between two chunks.

        In one statement a table, the thread would be held for the whole purge and every claim
        and write would wait behind it: a stall of seconds every purge interval under steady
        load.
        """
        now, rows = self._clock.now(), PURGE_CHUNK_ROWS
        return await purge_in_chunks(
            _PURGE_CHUNKS, rows, lambda statement: self._run(self._delete_now, statement, now, rows)
        )

    def _delete_now(self, statement: str, now: float, rows: int) -> int:
        return int(self._db.execute(statement, (now, rows)).rowcount)

    async def probe(self) -> str | None:
        """Why the store cannot take writes now, None when it can: its file gone or replaced,
        its disk (nearly) full, or a committed write failing (locked, read-only, I/O errors)."""
        if self._closed:
            return "the store is closed"
        try:
            if _identity(self._path) != self._file:
                return "the database file was replaced"
        except FileNotFoundError:
            return "the database file is gone (deleted or moved)"
        disk = os.statvfs(self._path.parent)
        if disk.f_bavail * disk.f_frsize < MIN_FREE_BYTES:
            return f"the disk is full (less than {MIN_FREE_BYTES // 1024} KiB free)"
        try:
            await self._run(
                self._transaction, [(Statements.probe, (self._clock.now() + _PROBE_TTL,))]
            )
        except StoreUnavailableError as error:
            return describe(error)
        return None

    async def close(self) -> None:
        if self._closed:
            return  # closing twice is harmless, as it was through aiosqlite
        self._closed = True
        self._reader.close()
        try:
            await self._run(self._db.close)
        finally:
            self._thread.shutdown(wait=False)


def _as_unavailable(error: Exception) -> Exception:
    """A failure of the file (see `_UNAVAILABLE_CODES`) as `StoreUnavailableError`; others as
    they are."""
    if (
        isinstance(error, sqlite3.OperationalError)
        and error.sqlite_errorcode & 0xFF in _UNAVAILABLE_CODES  # the primary code
    ):
        unavailable = StoreUnavailableError(f"SQLite: {describe(error)}")
        unavailable.__cause__ = error
        return unavailable
    return error


def _connect(path: Path) -> sqlite3.Connection:
    # In the store's thread: sqlite3 connections stay in the thread that made them.
    connection = sqlite3.connect(path, isolation_level=None)  # autocommit
    try:
        # WAL lets readers go on while the writer writes; NORMAL sync is durable across a
        # process crash (the case idempotency must survive), not across power loss.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        _migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _identity(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_dev, found.st_ino


def _rows(
    connection: sqlite3.Connection, statement: str, params: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in connection.execute(statement, params).fetchall()]


def _count_keys(path: Path) -> list[tuple[str, int]]:
    reader = _connect_reader(path)
    try:
        return [(str(scope), int(rows)) for scope, rows in reader.execute(Statements.count_keys)]
    finally:
        reader.close()


def _connect_reader(path: Path) -> sqlite3.Connection:
    # Read-only: nothing on the loop can take the write lock or run a checkpoint by accident.
    reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    reader.execute(f"PRAGMA busy_timeout={_READ_BUSY_TIMEOUT_MS}")
    return reader


def _migrate(connection: sqlite3.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock first, so two processes starting on one file
    # migrate one after the other.
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(Statements.create_version)
        row = connection.execute(Statements.select_version).fetchone()
        done = 0 if row is None else int(row[0])
        for migration in MIGRATIONS[done:]:
            for statement in migration:
                connection.execute(statement.replace("BYTEA", "BLOB"))
        # A newer conveyor may have migrated further; its tables are a superset of ours.
        version = max(done, len(MIGRATIONS))
        statement = Statements.insert_version if row is None else Statements.update_version
        connection.execute(statement, (version,))
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
