"""Worker processes killed outright: `make chaos`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from service import Role
from tests.conftest import Namespace, StartConveyor
from tests.support.ledger import Account, Ledger
from tests.support.processes import Process, done_ids
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

    async def all_handled() -> bool:
        return ledger.accepted <= set(done_ids(log))

    await eventually(all_handled, timeout=60, what="the new worker to drain the rest")
    ledger.succeeded.update(done_ids(log))
    await ledger.take_dead_letters(namespace, ["slow"])
    account = ledger.account()
    accounts.append(account)

    assert account.accepted == 300
    assert (account.lost, account.unexpected) == (0, 0)
    assert account.duplicated <= 10  # at most what the killed worker held (prefetch 10)
    assert await namespace.depth(namespace.topology.queue("slow")) == 0
