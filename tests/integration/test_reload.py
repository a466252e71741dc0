"""`conveyor serve --reload` as a real process on the real broker: a changed handler module
restarts the service, the handlers running at that moment finish under the old code, and every
event accepted before, during and after the reload ends handled. Refused with --workers."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from consumers.retry import RetryPolicy
from tests.support.cli import run_entry_point
from tests.support.namespace import Namespace
from tests.support.processes import Process, handler_log
from tests.support.waiting import eventually

HANDLER = """
import asyncio
from pathlib import Path

from consumers import Event

VERSION = {version}


async def handle(event: Event) -> None:
    log = Path(event.data["log"])
    with log.open("a") as sink:
        sink.write(f"start {{event.id}} v{{VERSION}}\\n")
    await asyncio.sleep(event.data["sleep"])
    with log.open("a") as sink:
        sink.write(f"done {{event.id}} v{{VERSION}}\\n")
"""

CONFIG = """
[[subscriptions]]
name = "reloaded"
events = ["work.*"]
handler = "{module}:handle"
prefetch = 10
concurrency = 2
"""

EVENTS = 12


async def test_a_changed_handler_reloads_and_every_event_in_flight_ends_handled(
    launch: Callable[..., Awaitable[Process]], namespace: Namespace, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    module = f"reload_handlers_{namespace.name.replace('-', '_')}"
    source = code / f"{module}.py"
    source.write_text(HANDLER.format(version=1))
    config = code / "subscriptions.toml"
    config.write_text(CONFIG.format(module=module))
    namespace.subscriptions["reloaded"] = RetryPolicy().delays
    process = await launch(
        flags=("--reload",),
        CONVEYOR_CONFIG=str(config),
        PYTHONPATH=str(code),
        CONVEYOR_SHUTDOWN_TIMEOUT="30s",
        CONVEYOR_DRAIN_DELAY="0s",
    )
    log = tmp_path / "handled.log"
    for n in range(EVENTS):
        document = {"type": "work.item", "id": f"w-{n}", "data": {"sleep": 1.0, "log": str(log)}}
        assert await process.post(document) == 202

    async def some_running() -> bool:
        return any(line.startswith("start") for line in handler_log(log))

    await eventually(some_running, timeout=20, what="the first handlers to start")
    source.write_text(HANDLER.format(version=2))

    async def all_done() -> bool:
        done = {line.split()[1] for line in handler_log(log) if line.startswith("done")}
        return len(done) == EVENTS

    await eventually(all_done, timeout=90, what="every event to be handled across the reload")
    lines = handler_log(log)
    started_v1 = {line.split()[1] for line in lines if line.startswith("start") and "v1" in line}
    done_v1 = {line.split()[1] for line in lines if line.startswith("done") and "v1" in line}
    # Drained, not cut: whatever the old code started, the old code finished.
    assert started_v1 == done_v1
    assert any(line.endswith("v2") for line in lines if line.startswith("done")), lines
    async with aiohttp.ClientSession() as session:
        for n in range(EVENTS):
            url = process.base / f"v1/events/w-{n}"
            async with session.get(url, params={"wait": "10s"}) as response:
                status = await response.json()
            assert status["state"] == "succeeded", status
    assert await namespace.depth(namespace.topology.dead_letter_queue("reloaded")) == 0

    process.popen.send_signal(signal.SIGTERM)
    assert await process.exited(timeout=60) == 0
    output = process.output.read_text()
    assert "stopping conveyor to reload" in output
    assert output.count("conveyor started") == 2


async def test_reload_is_refused_with_workers() -> None:
    refused = await run_entry_point("serve", "--reload", "--workers", "2", environ={})
    assert refused.code == 2
    assert "--reload runs one process: not with --workers" in refused.err
    by_setting = await run_entry_point("serve", "--reload", environ={"CONVEYOR_WORKERS": "3"})
    assert by_setting.code == 2
    assert "CONVEYOR_WORKERS > 1" in by_setting.err
