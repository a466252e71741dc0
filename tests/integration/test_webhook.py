"""The built-in webhook handler against a local HTTP server answering 200, 500, 429, 400."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from consumers import Handler
from consumers.builtin import webhook
from consumers.retry import RetryPolicy
from service.settings import parse_duration
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.waiting import eventually


@dataclass
class Downstream:
    """A webhook target that answers from a script, then 200 once the script runs out."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), dict(request.headers), await request.read()))
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, headers=headers)


@pytest.fixture
async def downstream() -> AsyncIterator[tuple[Downstream, str]]:
    target = Downstream()
    app = web.Application()
    app.router.add_post("/hook", target.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield target, str(server.make_url("/hook"))
    await server.close()


def hook(url: str) -> Handler:
    return webhook.build({"url": url, "timeout": "2s"}, parse_duration, {})


async def test_each_event_is_posted_in_binary_mode(
    start_conveyor: StartConveyor, downstream: tuple[Downstream, str]
) -> None:
    target, url = downstream
    conveyor = await start_conveyor((subscription("hook", ("hook.*",), hook(url)),))

    response = await conveyor.client.post(
        "/v1/events",
        data=b"raw text body",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "w-1",
            "ce-source": "/shop%20eu",
            "ce-type": "hook.sent",
            "ce-tenant": "acme",
            "Content-Type": "text/plain",
        },
    )
    assert response.status == 202

    async def delivered() -> bool:
        return len(target.requests) == 1

    await eventually(delivered, what="the webhook request")
    _, headers, body = target.requests[0]
    assert body == b"raw text body"
    assert headers["ce-id"] == "w-1"
    assert headers["ce-type"] == "hook.sent"
    assert headers["ce-source"] == "/shop%20eu"  # percent-encoded, as the HTTP binding says
    assert headers["ce-tenant"] == "acme"
    assert headers["ce-specversion"] == "1.0"
    assert headers["Content-Type"] == "text/plain"


async def test_500_is_retried_and_then_delivered(
    start_conveyor: StartConveyor, namespace: Namespace, downstream: tuple[Downstream, str]
) -> None:
    target, url = downstream
    target.script = [(500, {}), (503, {})]
    conveyor = await start_conveyor(
        (subscription("hook", ("hook.*",), hook(url), retry=RetryPolicy(3, (0.2,))),)
    )
    assert (await conveyor.post({"type": "hook.x", "id": "w-2"})).status == 202

    async def delivered() -> bool:
        return len(target.requests) == 3

    await eventually(delivered, what="two failures and a success")
    assert await namespace.depth(namespace.topology.dead_letter_queue("hook")) == 0


async def test_429_retry_after_is_honoured(
    start_conveyor: StartConveyor, downstream: tuple[Downstream, str]
) -> None:
    target, url = downstream
    target.script = [(429, {"Retry-After": "1"})]
    conveyor = await start_conveyor(
        (subscription("hook", ("hook.*",), hook(url), retry=RetryPolicy(3, ())),)
    )
    assert (await conveyor.post({"type": "hook.x", "id": "w-3"})).status == 202

    async def delivered() -> bool:
        return len(target.requests) == 2

    await eventually(delivered, what="the retry after Retry-After")
    assert target.requests[1][0] - target.requests[0][0] >= 0.95


async def test_400_is_permanent_and_dead_letters_at_once(
    start_conveyor: StartConveyor, namespace: Namespace, downstream: tuple[Downstream, str]
) -> None:
    target, url = downstream
    target.script = [(400, {})]
    conveyor = await start_conveyor(
        (subscription("hook", ("hook.*",), hook(url), retry=RetryPolicy(3, (0.2,))),)
    )
    assert (await conveyor.post({"type": "hook.x", "id": "w-4"})).status == 202

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("hook"), 1)
    headers = dead.headers or {}
    assert headers["x-conveyor-reason"] == "permanent-error"
    assert headers["x-conveyor-error-message"] == "webhook answered 400"
    assert len(target.requests) == 1


async def test_an_unreachable_target_is_retryable(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    conveyor = await start_conveyor(
        (subscription("hook", ("hook.*",), hook("http://127.0.0.1:9/x"), retry=RetryPolicy(2, ())),)
    )
    assert (await conveyor.post({"type": "hook.x", "id": "w-5"})).status == 202

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("hook"), 1)
    headers = dead.headers or {}
    assert headers["x-conveyor-reason"] == "retries-exhausted"
    assert headers["x-conveyor-attempts"] == 2
    assert "webhook unreachable" in str(headers["x-conveyor-error-message"])


async def test_a_redirect_is_not_followed_and_dead_letters(
    start_conveyor: StartConveyor, namespace: Namespace, downstream: tuple[Downstream, str]
) -> None:
    target, url = downstream
    target.script = [(302, {"Location": "/elsewhere"})]
    conveyor = await start_conveyor(
        (subscription("hook", ("hook.*",), hook(url), retry=RetryPolicy(3, ())),)
    )
    assert (await conveyor.post({"type": "hook.x", "id": "w-6"})).status == 202

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("hook"), 1)
    assert (dead.headers or {})["x-conveyor-error-message"] == "webhook answered 302"
    assert len(target.requests) == 1  # no bodiless GET to /elsewhere
