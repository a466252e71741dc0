"""`conveyor serve --workers N`: processes sharing one port under a supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.ledger import Ledger
from tests.support.namespace import Namespace
from tests.support.processes import Process
from tests.support.waiting import eventually


def children(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: set[int] = set()
    for task in tasks.iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def listeners(port: int) -> set[int]:
    """Pids of the processes with a listening socket on `port` (from `ss`)."""
    output = subprocess.run(  # noqa: S603 - a fixed command
        ["/usr/bin/ss", "-ltnpH", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(part.split("=")[1]) for part in output.replace(",", " ").split() if "pid=" in part}


async def test_two_workers_share_the_port_and_a_killed_one_is_replaced(
    launch: Callable[..., Awaitable[Process]], namespace: Namespace, tmp_path: Path
) -> None:
    supervisor = await launch(CONVEYOR_WORKERS="2")
    port = supervisor.base.port
    assert port is not None

    async def two_listening() -> bool:
        return len(children(supervisor.popen.pid)) == 2 and len(listeners(port)) == 2

    await eventually(two_listening, timeout=20, what="two workers listening on one port")
    workers = children(supervisor.popen.pid)
    assert listeners(port) == workers  # the workers listen, not the supervisor

    log = tmp_path / "handled.log"
    ledger = Ledger("workers")
    work = {"sleep": 0, "log": str(log)}
    await ledger.send(supervisor, 200, concurrency=16, event_type="slow.job", data=work)
    assert set(ledger.answers.values()) == {202}

    # One worker dies: the supervisor starts another, and the port keeps answering.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        now = children(supervisor.popen.pid)
        return len(now) == 2 and victim not in now and len(listeners(port)) == 2

    await eventually(replaced, timeout=20, what="the killed worker to be replaced")
    await ledger.send(supervisor, 100, concurrency=16, event_type="slow.job", data=work)
    assert set(ledger.answers.values()) == {202}

    await ledger.handled_by_log(log, timeout=30)

    survivors = children(supervisor.popen.pid)
    supervisor.popen.send_signal(signal.SIGTERM)
    assert await supervisor.exited(timeout=30) == 0
    assert not alive(survivors)  # the supervisor waited for its workers to drain and exit
