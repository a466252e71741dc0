"""The store failing under a running conveyor: locked, full, deleted, its connections cut.

Each fault is real (another connection holding SQLite's lock, a filesystem with no room left,
the files deleted, PostgreSQL terminating this test's own backends). What the client sees is a
503 `store-unavailable` with Retry-After, within the store timeout, for a request whose event
was not published; /readyz says the store cannot take writes; and every event answered 202 is
handled, and its status recorded, once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import pytest
from yarl import URL

from consumers import Event
from tests.conftest import POSTGRES_URL, Running, StartConveyor, subscription
from tests.support.ledger import Account, Ledger
from tests.support.waiting import eventually

STORE_TIMEOUT = 0.5  # the setting, short so that the test does not wait out the default
PROBLEM = "urn:conveyor:problem:store-unavailable"
BATCH = "application/cloudevents-batch+json"


# Why a check fails is shown to an admin token only.
READYZ_ADMIN_TOKEN = "store-faults-admin-token-0123"


async def readiness(conveyor: Running) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {READYZ_ADMIN_TOKEN}"}
    response = await conveyor.client.get("/readyz", headers=headers)
    return response.status, await response.json()


def event(event_id: str) -> dict[str, str]:
    return {"type": "chaos.event", "id": event_id, "source": "/chaos"}


async def assert_refused_as_unavailable(conveyor: Running, event_id: str) -> None:
    """POST one event: 503 store-unavailable with Retry-After, well within the lock's wait."""
    clock = asyncio.get_running_loop().time
    started = clock()
    response = await conveyor.post(event(event_id))
    took = clock() - started
    body = await response.json(content_type=None)
    assert (response.status, body["type"]) == (503, PROBLEM), body
    assert response.headers["Retry-After"] == "2"
    assert "retry later" in body["detail"]
    # Bounded by the setting, not by SQLite's 10 s busy wait or the 5 s publish timeout.
    assert took < STORE_TIMEOUT + 2.0, took


async def assert_store_not_ready(conveyor: Running, problem: str) -> None:
    status, body = await readiness(conveyor)
    assert status == 503, body
    assert body["status"] == "not ready"
    assert "store" in body["missing"]
    assert body["checks"]["store"].startswith("not writable: "), body
    assert problem in body["checks"]["store"], body
    assert body["checks"]["broker"] == "connected"  # only the store is wrong


async def start_on_sqlite(start_conveyor: StartConveyor, ledger: Ledger, path: Path) -> Running:
    """Conveyor with one steady subscription on a SQLite file the test can break."""
    return await start_conveyor(
        (subscription("steady", ("chaos.*",), ledger.handler()),),
        store_url=f"sqlite:///{path}",
        store_timeout=STORE_TIMEOUT,
        admin_tokens=(("ops", READYZ_ADMIN_TOKEN),),
    )


def settle(ledger: Ledger, accounts: list[Account]) -> Account:
    account = ledger.account()
    accounts.append(account)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0), account
    return account


async def test_a_store_locked_from_outside_answers_503_at_once_and_is_not_ready(
    start_conveyor: StartConveyor, tmp_path: Path, accounts: list[Account]
) -> None:
    ledger = Ledger("SQLite locked by another process")
    path = tmp_path / "locked.db"
    conveyor = await start_on_sqlite(start_conveyor, ledger, path)
    await ledger.send(conveyor, 5, concurrency=5)
    refused = f"refused-{uuid.uuid4().hex[:8]}"
    batch = [{**event(f"{refused}-{n}"), "specversion": "1.0"} for n in range(2)]

    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")  # another process takes the write lock and keeps it
    try:
        await assert_refused_as_unavailable(conveyor, refused)
        response = await conveyor.post(batch, BATCH)
        body = await response.json(content_type=None)
        assert (response.status, body["type"]) == (503, PROBLEM), body
        await assert_store_not_ready(conveyor, f"no answer within {STORE_TIMEOUT:g} s")
        await ledger.send(conveyor, 10, concurrency=5)
    finally:
        other.execute("ROLLBACK")
        other.close()

    await conveyor.ready()
    # The refused event was not published, and its key was not left claimed: sent again, it is
    # accepted (not 409) and handled once.
    response = await conveyor.post(event(refused))
    assert response.status == 202
    response = await conveyor.post(batch, BATCH)
    assert response.status == 202, await response.text()
    for refused_id in (refused, *(entry["id"] for entry in batch)):
        ledger.answers[refused_id] = 202
    await ledger.send(conveyor, 5, concurrency=5)  # after the lock: their handling comes last
    await ledger.settled()
    account = settle(ledger, accounts)
    assert account.rejected == {503: 10}
    assert (account.accepted, account.handled, account.recovered) == (13, 13, 0)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, unmounted afterwards (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(  # noqa: S603 - fixed arguments
        ["/usr/bin/mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["/usr/bin/umount", "-l", str(mount)], check=False)  # noqa: S603


def fill(directory: Path) -> Path:
    """A file that takes every free byte of `directory`'s filesystem."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as file:
        for chunk in (1 << 16, 1 << 12, 1):
            with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)):
                write_until_full(file, chunk)
    return filler


def write_until_full(file: BinaryIO, chunk: int) -> None:
    while True:
        file.write(b"\0" * chunk)


async def test_a_full_disk_answers_503_and_is_not_ready_until_there_is_room(
    start_conveyor: StartConveyor, small_filesystem: Path, accounts: list[Account]
) -> None:
    ledger = Ledger("SQLite's disk full")
    conveyor = await start_on_sqlite(start_conveyor, ledger, small_filesystem / "conveyor.db")
    await ledger.send(conveyor, 5, concurrency=5)
    await ledger.settled()

    filler = fill(small_filesystem)
    try:
        await assert_store_not_ready(conveyor, "the disk is full")
        await assert_refused_as_unavailable(conveyor, f"full-{uuid.uuid4().hex[:8]}")
        await ledger.send(conveyor, 10, concurrency=5)
    finally:
        filler.unlink()

    await conveyor.ready()
    await ledger.send(conveyor, 5, concurrency=5)
    await ledger.settled()
    account = settle(ledger, accounts)
    assert account.rejected == {503: 10}
    assert (account.accepted, account.handled, account.recovered) == (10, 10, 0)


@contextlib.contextmanager
def read_only(*files: Path) -> Iterator[None]:
    """`files` made immutable (chattr +i): as root, a file's mode would not stop a write. The
    shared-memory index stays writable: SQLite maps it, and a write to a mapped immutable file
    would kill the process (SIGBUS) rather than fail a call."""
    done: list[Path] = []
    try:
        for file in files:
            made = subprocess.run(  # noqa: S603 - fixed arguments
                ["/usr/bin/chattr", "+i", str(file)], capture_output=True, check=False
            )
            if made.returncode != 0:
                pytest.skip(f"cannot make a file immutable here: {made.stderr.decode().strip()}")
            done.append(file)
        yield
    finally:
        for file in done:
            subprocess.run(["/usr/bin/chattr", "-i", str(file)], check=True)  # noqa: S603


async def test_a_read_only_store_answers_503_and_is_not_ready_until_writable(
    start_conveyor: StartConveyor, tmp_path: Path, accounts: list[Account]
) -> None:
    ledger = Ledger("SQLite files read-only")
    path = tmp_path / "read-only.db"
    conveyor = await start_on_sqlite(start_conveyor, ledger, path)
    await ledger.send(conveyor, 5, concurrency=5)
    await ledger.settled()

    with read_only(path, Path(f"{path}-wal")):
        await assert_store_not_ready(conveyor, "disk I/O error")
        await assert_refused_as_unavailable(conveyor, f"read-only-{uuid.uuid4().hex[:8]}")
        await ledger.send(conveyor, 10, concurrency=5)

    await conveyor.ready()
    await ledger.send(conveyor, 5, concurrency=5)
    await ledger.settled()
    account = settle(ledger, accounts)
    assert account.rejected == {503: 10}
    assert (account.accepted, account.handled, account.recovered) == (10, 10, 0)


async def test_a_deleted_store_file_makes_conveyor_not_ready(
    start_conveyor: StartConveyor, tmp_path: Path, accounts: list[Account]
) -> None:
    ledger = Ledger("SQLite files deleted")
    path = tmp_path / "deleted.db"
    conveyor = await start_on_sqlite(start_conveyor, ledger, path)
    await ledger.send(conveyor, 5, concurrency=5)
    status, body = await readiness(conveyor)
    assert (status, body["checks"]["store"]) == (200, "writable")

    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink()
    # Writes would go on into the unlinked file, and be gone at the next start.
    await assert_store_not_ready(conveyor, "the database file is gone")
    await ledger.settled()
    settle(ledger, accounts)


async def test_postgres_backends_terminated_under_load_lose_no_event_and_no_status(
    start_conveyor: StartConveyor,
    postgres_url: str,
    accounts: list[Account],
) -> None:
    ledger = Ledger("PostgreSQL backends terminated every 0.3 s")
    # The application name marks this test's connections: only they are terminated.
    name = f"conveyor-{URL(postgres_url).query['search_path']}"
    conveyor = await start_conveyor(
        (subscription("steady", ("chaos.*",), ledger.handler(), prefetch=32, concurrency=16),),
        store_url=f"{postgres_url}&application_name={name}",
    )
    admin = await asyncpg.connect(POSTGRES_URL)
    terminated = 0

    async def terminate_backends() -> None:
        nonlocal terminated
        while True:
            # CASE, not AND: it guarantees the name is compared before anything is terminated,
            # so no other session's backend is ever touched.
            terminated += await admin.fetchval(
                "SELECT count(*) FILTER (WHERE CASE WHEN application_name = $1 "
                "THEN pg_terminate_backend(pid) ELSE false END) FROM pg_stat_activity",
                name,
            )
            await asyncio.sleep(0.3)

    killer = asyncio.create_task(terminate_backends())
    try:
        await ledger.send(conveyor, 300, concurrency=16)
    finally:
        killer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await killer
        await admin.close()
    assert terminated > 0
    ledger.notes.append(f"{terminated} backends terminated")

    await ledger.settled()
    account = settle(ledger, accounts)
    assert set(account.rejected) <= {503}, account.rejected  # never a 500
    assert account.accepted > 0

    # Every accepted event's status reaches `succeeded`: no status write was lost.
    unfinished = set(ledger.accepted)

    async def all_succeeded() -> bool:
        for event_id in list(unfinished):
            status, body = await conveyor.status(f"/v1/events/{event_id}")
            if status == 200 and body["state"] == "succeeded":
                unfinished.discard(event_id)
        return not unfinished

    await eventually(all_succeeded, timeout=30, what="every accepted event's status to succeed")


async def test_statuses_written_while_the_store_could_not_take_them_land_once_it_can(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    release = asyncio.Event()
    handling: set[str] = set()

    async def held(event: Event) -> None:
        handling.add(event.id)
        await release.wait()

    path = tmp_path / "outlived.db"
    conveyor = await start_conveyor(
        (subscription("held", ("outage.*",), held, prefetch=4, concurrency=4),),
        store_url=f"sqlite:///{path}",
        store_timeout=STORE_TIMEOUT,
        admin_tokens=(("ops", READYZ_ADMIN_TOKEN),),
    )
    locations = []
    for number in range(3):
        response = await conveyor.post({"type": "outage.x", "id": f"o-{number}", "source": "/o"})
        assert response.status == 202
        locations.append((await response.json())["location"])

    async def all_handling() -> bool:
        return len(handling) == 3

    await eventually(all_handling, what="the three handlers to start")
    with read_only(path, Path(f"{path}-wal")):
        await assert_store_not_ready(conveyor, "disk I/O error")
        release.set()  # the handlers return; their statuses cannot be written now

        async def acked() -> bool:
            samples = await conveyor.client.get("/metrics")
            text = await samples.text()
            return 'conveyor_deliveries_total{outcome="acked",subscription="held"} 3.0' in text

        await eventually(acked, what="the three deliveries acked while the store was read-only")

    async def all_succeeded() -> bool:
        states = [(await conveyor.status(location))[1].get("state") for location in locations]
        return states == ["succeeded"] * 3

    await eventually(all_succeeded, timeout=20, what="each status to reach succeeded")
