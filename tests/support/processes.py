"""Running `conveyor serve` as a real process in tests: start, wait for ready, kill at the end."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from yarl import URL

from consumers.retry import RetryPolicy
from tests.support.waiting import eventually

if TYPE_CHECKING:  # conftest registers this module's fixture: no import cycle
    from tests.support.namespace import Namespace

ROOT = Path(__file__).resolve().parents[2]


def conveyor_command() -> list[str]:
    return [sys.executable, "-m", "service", "serve"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Process:
    popen: subprocess.Popen[str]
    base: URL
    output: Path

    async def get(self, path: str) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base / path.lstrip("/")) as r,
        ):
            return r.status

    async def answers(self) -> bool:
        """The HTTP listener is up (whatever /livez says)."""
        try:
            await self.get("/livez")
        except aiohttp.ClientError:
            return False
        return True

    async def post(self, document: object, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.base / "v1/events", json=document, headers=headers) as response,
        ):
            return response.status

    async def post_status(self, document: dict[str, Any]) -> int:
        return await self.post(document)

    def peak_rss_bytes(self) -> int:
        """The process's peak resident memory so far (VmHWM), from /proc."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc: not Linux?")

    async def exited(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            while (code := self.popen.poll()) is None:  # noqa: ASYNC110 - Popen has no awaitable exit
                await asyncio.sleep(0.05)
        return code


SLOW_CONFIG = """
[[subscriptions]]
name = "slow"
events = ["slow.*"]
handler = "tests.support.handlers:slow"
prefetch = 10
concurrency = 2
"""


@pytest.fixture
async def launch(
    tmp_path: Path, namespace: Namespace, amqp_url: str
) -> AsyncIterator[Callable[..., Awaitable[Process]]]:
    """Start `conveyor serve` with the slow subscription; it is killed at teardown if still up."""
    started: list[Process] = []
    config = tmp_path / "subscriptions.toml"
    config.write_text(SLOW_CONFIG)
    # The slow subscription keeps the default retry ladder.
    namespace.subscriptions["slow"] = RetryPolicy().delays

    async def start(*, wait_ready: bool = True, flags: tuple[str, ...] = (), **env: str) -> Process:
        port = free_port()
        output = tmp_path / f"conveyor-{len(started)}.log"
        settings = {
            "CONVEYOR_AMQP_URL": amqp_url,
            "CONVEYOR_NAMESPACE": namespace.name,
            "CONVEYOR_HTTP_HOST": "127.0.0.1",
            "CONVEYOR_HTTP_PORT": str(port),
            "CONVEYOR_CONFIG": str(config),
            "CONVEYOR_STORE_URL": f"sqlite:///{tmp_path}/store.db",
            # No delay chain (26 quorum queues) unless a test asks for delayed delivery.
            "CONVEYOR_MAX_DELAY": "0",
            **env,
        }
        with output.open("w") as sink:
            popen = subprocess.Popen(  # noqa: S603, ASYNC220 - our own entry point, started once
                [*conveyor_command(), *flags],
                env={**os.environ, **settings},
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                text=True,
            )
        process = Process(popen, URL(f"http://127.0.0.1:{port}"), output)
        started.append(process)

        async def ready() -> bool:
            try:
                return await process.get("/readyz") == 200
            except aiohttp.ClientError:
                return False

        if wait_ready:
            await eventually(ready, timeout=20, what="conveyor serve to become ready")
        else:
            await eventually(process.answers, timeout=20, what="conveyor serve to listen")
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


def handler_log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def done_ids(log: Path) -> Counter[str]:
    """How often each event id finished in the slow handler's log."""
    return Counter(line.split()[1] for line in handler_log(log) if line.startswith("done "))
