"""Shared fixtures: the broker to talk to, a namespace per test, conveyor in-process."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from consumers import Handler
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from producers.delay import levels_for
from service import Settings, build_app
from service.admin.rate_history import INTERVAL_SECONDS as HISTORY_INTERVAL_SECONDS
from service.app import PURGE_INTERVAL_SECONDS
from service.app_keys import STATUS_BOOK
from service.clock import SYSTEM_CLOCK, Clock
from service.observability.tracing import Tracing
from service.schedules import Schedule
from service.store import Store, open_store
from tests.support.broker_plugins import ensure_consistent_hash
from tests.support.ledger import ACCOUNTS, HEADER, Account
from tests.support.namespace import Namespace
from tests.support.processes import launch  # noqa: F401 - a fixture, shared by the process tests
from tests.support.proxy import FaultProxy
from tests.support.waiting import eventually

NO_RETRY = RetryPolicy(in_process=1, delays=())
BROKER_HELP = (
    "These tests need a real RabbitMQ and found none. Either set CONVEYOR_TEST_AMQP_URL, "
    "start one on localhost:5672 (`rabbitmq-server -detached`, or "
    "`docker run -d -p 5672:5672 rabbitmq:3.13`), or make a Docker engine available for "
    "testcontainers."
)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """CONVEYOR_TEST_AMQP_URL, else a broker on localhost:5672, else testcontainers; else fail."""
    configured = os.environ.get("CONVEYOR_TEST_AMQP_URL")
    if configured:
        yield configured
        return
    if _answers("127.0.0.1", 5672):
        yield "amqp://guest:guest@127.0.0.1:5672/"
        return
    container = _start_rabbitmq_container()
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/"
    finally:
        container.stop()


@pytest.fixture(scope="session")
def consistent_hash_exchange(amqp_url: str) -> None:
    """Once per run: the broker has the plugin ordered subscriptions need, or the run stops.

    The tiers that talk to the broker use it for every test (their conftest); unit tests do not.
    """
    host = URL(amqp_url).host or "127.0.0.1"
    missing = asyncio.run(ensure_consistent_hash(amqp_url, host))
    if missing is not None:
        pytest.exit(missing, returncode=3)


def _start_rabbitmq_container() -> Any:
    try:
        # testcontainers 4.15 warns about its own deprecated decorator at import time.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.community.rabbitmq import (  # noqa: PLC0415 - only when needed
                RabbitMqContainer,
            )

        return RabbitMqContainer("rabbitmq:3.13").start()
    except Exception as error:  # noqa: BLE001 - any failure here means: no broker to be had
        reason = f"{type(error).__name__}: {error}"
    pytest.fail(f"{BROKER_HELP} (testcontainers: {reason})", pytrace=False)


@pytest.fixture
async def namespace(amqp_url: str) -> AsyncIterator[Namespace]:
    space = Namespace(f"test-{uuid.uuid4().hex[:12]}", amqp_url)
    yield space
    await space.cleanup()


@dataclass
class Running:
    client: TestClient[Any, Any]
    settings: Settings

    async def ready(self, timeout: float = 15.0) -> None:
        async def is_ready() -> bool:
            response = await self.client.get("/readyz")
            return response.status == 200

        await eventually(is_ready, timeout=timeout, what="conveyor to become ready")

    async def post(self, document: Any, content_type: str = "application/json") -> Any:
        return await self.client.post(
            "/v1/events", json=document, headers={"Content-Type": content_type}
        )

    async def post_status(self, document: dict[str, Any]) -> int:
        status: int = (await self.post(document)).status
        return status

    async def status(self, location: str, **query: str) -> tuple[int, Any]:
        """GET a status URL: (HTTP status, JSON or problem body)."""
        response = await self.client.get(location, params=query)
        return response.status, await response.json(content_type=None)

    async def long_polling(self, count: int = 1) -> None:
        """Wait until `count` status requests with ?wait= hold on in this process: each has
        looked the event up and found it not done."""
        app: web.Application | None = self.client.app
        assert app is not None

        async def holding() -> bool:
            return app[STATUS_BOOK].waiting == count

        await eventually(holding, what=f"{count} long-polls holding on")


StartConveyor = Callable[..., Awaitable[Running]]


async def take_published(
    conveyor: Running, namespace: Namespace, queue: str, *, sentinel_type: str
) -> list[AbstractIncomingMessage]:
    """Everything conveyor published into `queue` (a queue of an ingress without consumers)
    for the requests that have answered. A request answers only once RabbitMQ confirmed what
    it published, so all of it is enqueued before a sentinel event posted now, which routes to
    `queue` by `sentinel_type`: taking until the sentinel sees every wrong extra."""
    sentinel = {"type": sentinel_type, "id": f"sentinel-{uuid.uuid4().hex}", "source": "/tests"}
    response = await conveyor.post(sentinel)
    assert response.status == 202, await response.text()
    return await namespace.take_until(queue, sentinel["id"])


def subscription(
    name: str,
    events: tuple[str, ...],
    handler: Handler,
    *,
    prefetch: int = 8,
    concurrency: int = 4,
    timeout: float = 10.0,
    retry: RetryPolicy = NO_RETRY,
    completions: bool | None = None,
) -> Subscription:
    """A subscription for tests; by default one attempt and no ladder, so failures show at once.
    Completion events are off unless a test asks for them (`completions=True`), as for users."""
    return Subscription(
        name=name,
        events=events,
        handler=handler,
        handler_path=f"tests:{name}",
        prefetch=prefetch,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry,
        completions=completions,
    )


@pytest.fixture
async def start_conveyor(
    amqp_url: str, namespace: Namespace, tmp_path: Path
) -> AsyncIterator[StartConveyor]:
    """Start conveyor in this process on a free port; every one started is stopped at teardown."""
    running: list[Running] = []

    async def start(
        subscriptions: tuple[Subscription, ...] = (),
        *,
        wait_ready: bool = True,
        amqp_url_override: str | None = None,
        tracing: Tracing | None = None,
        history_interval: float = HISTORY_INTERVAL_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
        purge_interval: float = PURGE_INTERVAL_SECONDS,
        schedules: tuple[Schedule, ...] = (),
        **overrides: Any,
    ) -> Running:
        defaults: dict[str, Any] = {
            "shutdown_timeout": 5.0,
            "store_url": f"sqlite:///{tmp_path}/conveyor-{len(running)}.db",
            # No delay chain unless a test asks for one: its 25 quorum queues slow every start.
            "max_delay": 0.0,
        }
        settings = replace(
            Settings(),
            amqp_url=amqp_url_override or amqp_url,
            namespace=namespace.name,
            http_host="127.0.0.1",
            http_port=0,
            **(defaults | overrides),
        )
        for declared in subscriptions:
            namespace.register(declared)
        namespace.delay_levels = max(namespace.delay_levels, levels_for(settings.max_delay))
        app = build_app(
            settings,
            subscriptions,
            max_backoff=0.3,
            queue_poll_interval=0.2,
            tracing=tracing,
            history_interval=history_interval,
            clock=clock,
            purge_interval=purge_interval,
            schedules=schedules,
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        started = Running(client, settings)
        running.append(started)
        if wait_ready:
            await started.ready()
        return started

    yield start
    for started in reversed(running):
        await started.client.close()


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    """A TCP proxy in front of the broker that tests can make refuse, cut or stall connections."""
    target = URL(amqp_url)
    faults = FaultProxy(target.host or "127.0.0.1", target.port or 5672)
    await faults.start()
    yield faults
    await faults.stop()


POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A schema of its own on the shared PostgreSQL, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL)
    except OSError as error:
        pytest.fail(
            f"store tests need PostgreSQL at {POSTGRES_URL} (set CONVEYOR_TEST_POSTGRES_URL): "
            f"{error}",
            pytrace=False,
        )
    await admin.execute(f"CREATE SCHEMA {schema}")
    # asyncpg passes unknown DSN parameters on as server settings.
    yield f"{POSTGRES_URL}?search_path={schema}"
    await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store backend in turn: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return cast("str", request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened store on each backend in turn (see `store_url`), closed afterwards."""
    opened = await open_store(store_url)
    yield opened
    await opened.close()


def url_with_port(url: str, port: int) -> str:
    return str(URL(url).with_host("127.0.0.1").with_port(port))


@pytest.fixture
def accounts(request: pytest.FixtureRequest) -> list[Account]:
    """Where loss-accounting scenarios put their account; the session prints the table."""
    return request.config.stash.setdefault(ACCOUNTS, [])


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process tests run on asyncio's own loop; CONVEYOR_TEST_EVENT_LOOP=uvloop (`make
    test-uvloop`) runs them on uvloop, which CONVEYOR_EVENT_LOOP=uvloop gives `conveyor serve`."""
    if os.environ.get("CONVEYOR_TEST_EVENT_LOOP") == "uvloop":
        import uvloop  # noqa: PLC0415 - the uvloop extra, installed by `make install`

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    settled = config.stash.get(ACCOUNTS, [])
    if settled:
        terminalreporter.write_sep("=", "loss accounting")
        terminalreporter.write_line(HEADER)
        for account in settled:
            terminalreporter.write_line(account.row())
