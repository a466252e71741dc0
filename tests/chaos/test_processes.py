"""Worker processes killed outright: `make chaos`."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from service import Role
from tests.conftest import StartConveyor
from tests.support.ledger import Account, Ledger
from tests.support.namespace import Namespace
from tests.support.processes import Process, done_ids, handler_log
from tests.support.waiting import eventually


async def test_a_worker_killed_mid_batch_and_a_new_one_drains_the_rest(
    start_conveyor: StartConveyor,
    namespace: Namespace,
    launch: Callable[..., Awaitable[Process]],
    tmp_path: Path,
    accounts: list[Account],
) -> None:
    ledger = Ledger("worker SIGKILLed mid-batch (300 events)")
    log = tmp_path / "handled.log"
    # The ingress runs here; the workers are real `conveyor serve` processes (the slow handler).
    ingress = await start_conveyor(role=Role.INGRESS)
    first = await launch(CONVEYOR_ROLE="worker")
    slots = asyncio.Semaphore(32)

    async def post(index: int) -> None:
        event_id = f"k-{index}"
        document = {
            "type": "slow.job",
            "id": event_id,
            "source": "/kill",
            "data": {"sleep": 0.05, "log": str(log)},
        }
        async with slots:
            ledger.answers[event_id] = (await ingress.post(document)).status

    await asyncio.gather(*(post(index) for index in range(300)))

    async def some_handled() -> bool:
        return len(done_ids(log)) >= 50

    await eventually(some_handled, what="the first worker to be part way")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait()
    await launch(CONVEYOR_ROLE="worker")

    await ledger.handled_by_log(log, timeout=60)
    await ledger.take_dead_letters(namespace, ["slow"])
    account = ledger.account()
    accounts.append(account)

    assert account.accepted == 300
    assert (account.lost, account.unexpected) == (0, 0)
    assert account.duplicated <= 10  # at most what the killed worker held (prefetch 10)
    assert await namespace.depth(namespace.topology.queue("slow")) == 0


async def test_sigterm_under_load_drains_and_leaves_only_never_started_events_queued(
    launch: Callable[..., Awaitable[Process]],
    namespace: Namespace,
    tmp_path: Path,
    accounts: list[Account],
) -> None:
    ledger = Ledger("SIGTERM under load (2,000 events, 32 clients)")
    log = tmp_path / "handled.log"
    # One real `conveyor serve` takes the HTTP load and runs the handlers.
    process = await launch(CONVEYOR_SHUTDOWN_TIMEOUT="20s", CONVEYOR_DRAIN_DELAY="1s")
    work = {"sleep": 0.02, "log": str(log)}
    sending = asyncio.create_task(
        ledger.send(process, 2_000, concurrency=32, event_type="slow.job", data=work)
    )

    async def part_way() -> bool:
        return len(done_ids(log)) >= 100

    await eventually(part_way, timeout=30, what="the handlers to be part way")
    process.popen.send_signal(signal.SIGTERM)
    assert await process.exited(timeout=40) == 0
    await sending  # clients still sending get refused connections (counted as 0) or 503s

    lines = handler_log(log)
    started = Counter(line.split()[1] for line in lines if line.startswith("start "))
    done_before_exit = done_ids(log)
    assert started == done_before_exit  # every handler that started was allowed to finish
    # Only deliveries that never started are left, all of them back in the queue.
    left = await namespace.depth(namespace.topology.queue("slow"))
    assert left == len(ledger.accepted - set(done_before_exit))
    assert set(ledger.answers.values()) <= {202, 503, 0}

    await launch()  # a new process handles what the first one left

    await ledger.handled_by_log(log, timeout=60)
    await ledger.take_dead_letters(namespace, ["slow"])
    ledger.notes.append(f"{left} left queued at exit, none started")
    account = ledger.account()
    accounts.append(account)

    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)
    assert await namespace.depth(namespace.topology.queue("slow")) == 0


FLOOD_CLIENTS = 1_000


async def test_a_flood_of_1000_clients_is_answered_with_bounded_memory_and_recovers(
    launch: Callable[..., Awaitable[Process]],
    namespace: Namespace,
    tmp_path: Path,
    accounts: list[Account],
) -> None:
    ledger = Ledger(f"flood: {FLOOD_CLIENTS:,} clients at once, 64 KB events")
    log = tmp_path / "handled.log"
    process = await launch()  # the default CONVEYOR_MAX_CONCURRENT_REQUESTS (256)
    rss_at_start = process.peak_rss_bytes()
    # Each client its own connection (Process.post opens a session per request), all at once.
    work = {"sleep": 0, "log": str(log), "padding": "x" * 64 * 1024}
    await ledger.send(
        process, 2 * FLOOD_CLIENTS, concurrency=FLOOD_CLIENTS, event_type="slow.job", data=work
    )
    peak_rss = process.peak_rss_bytes()

    # It kept answering: accepted, or told to come back; never a dropped connection or a 5xx
    # other than 503.
    assert set(ledger.answers.values()) <= {202, 503}
    assert ledger.accepted
    # Recovered: ready, and a lone event afterwards is accepted.
    assert await process.get("/readyz") == 200
    ledger_after = Ledger("after the flood")
    await ledger_after.send(process, 10, concurrency=1, event_type="slow.job", data=work)
    assert set(ledger_after.answers.values()) == {202}
    ledger.answers.update(ledger_after.answers)

    await ledger.handled_by_log(log, timeout=120)
    await ledger.take_dead_letters(namespace, ["slow"])
    ledger.notes += [
        f"peak RSS {peak_rss / 2**20:.0f} MB (at start {rss_at_start / 2**20:.0f} MB)",
        f"slowest answer {max(ledger.latencies):.1f} s",
    ]
    account = ledger.account()
    accounts.append(account)

    assert (account.lost, account.unexpected) == (0, 0)
    # Bodies being handled are bounded by 256 x 64 KB, and each connection buffers at most
    # aiohttp's read buffer: a generous bound on the whole process.
    assert peak_rss < 300 * 2**20
