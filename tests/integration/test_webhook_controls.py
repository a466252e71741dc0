"""Signed webhook requests, 410 Gone, the kept response body and the endpoint's circuit breaker,
against a local aiohttp receiver and the real broker."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook as StandardWebhook

from consumers import Handler
from consumers.builtin import webhook
from consumers.retry import RetryPolicy
from service.settings import parse_duration
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.waiting import eventually

OLD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_" + "c2Vjb25kIHNlY3JldCBvZiB0aGUgcm90YXRpb24="


@dataclass
class Receiver:
    """Answers from a script of (status, body), then `then` (200 unless told otherwise)."""

    script: list[tuple[int, bytes]] = field(default_factory=list)
    then: int = 200
    requests: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), dict(request.headers), await request.read()))
        status, body = self.script.pop(0) if self.script else (self.then, b"")
        self.answered.append(status)
        return web.Response(status=status, body=body)

    def ids_answered(self, status: int) -> list[str]:
        return [
            headers["ce-id"]
            for (_, headers, _), answer in zip(self.requests, self.answered, strict=True)
            if answer == status
        ]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/hook", target.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield target, str(server.make_url("/hook"))
    await server.close()


def hook(url: str, environ: dict[str, str] | None = None, **options: Any) -> Handler:
    return webhook.build({"url": url, "timeout": "2s", **options}, parse_duration, environ or {})


async def test_requests_are_signed_with_every_secret_and_keep_their_id_on_a_retry(
    start_conveyor: StartConveyor, receiver: tuple[Receiver, str]
) -> None:
    target, url = receiver
    target.script = [(503, b"")]
    handler = hook(url, {"HOOK_SECRETS": f"{OLD_SECRET},{NEW_SECRET}"}, secret_env="HOOK_SECRETS")
    conveyor = await start_conveyor(
        (subscription("signed", ("hook.*",), handler, retry=RetryPolicy(2, ())),)
    )
    body = b'{"order":"o-1","total":12}'
    response = await conveyor.client.post(
        "/v1/events",
        data=body,
        headers={
            "ce-specversion": "1.0",
            "ce-id": "sig-1",
            "ce-source": "/shop",
            "ce-type": "hook.signed",
            "Content-Type": "application/json",
        },
    )
    assert response.status == 202

    async def retried() -> bool:
        return len(target.requests) == 2

    await eventually(retried, what="the 503 and its retry")
    (_, first, first_body), (_, second, second_body) = target.requests
    assert first_body == second_body == body
    assert first["webhook-id"] == second["webhook-id"]
    assert first["webhook-id"].startswith("msg_")
    for headers in (first, second):
        # The receiver's side, as the README shows it: the standardwebhooks package, each secret.
        for secret in (OLD_SECRET, NEW_SECRET):
            assert StandardWebhook(secret).verify(body, headers) == {"order": "o-1", "total": 12}
        assert len(headers["webhook-signature"].split(" ")) == 2
    with pytest.raises(Exception, match="signature"):
        StandardWebhook("whsec_" + "d3Jvbmcgc2VjcmV0").verify(body, second)


async def test_410_gone_dead_letters_at_once_with_the_answer_kept(
    start_conveyor: StartConveyor, namespace: Namespace, receiver: tuple[Receiver, str]
) -> None:
    target, url = receiver
    answer = b'{"error":"this endpoint was removed"}' + b"x" * 2000
    target.script = [(410, answer)]
    conveyor = await start_conveyor(
        (subscription("gone", ("hook.*",), hook(url), retry=RetryPolicy(3, (0.2,))),)
    )
    accepted = await conveyor.post({"type": "hook.x", "id": "gone-1"})
    assert accepted.status == 202

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("gone"), 1)
    headers = dead.headers or {}
    assert headers["x-conveyor-reason"] == "endpoint-gone"
    assert headers["x-conveyor-error-message"] == "webhook answered 410"
    detail = headers["x-conveyor-error-detail"]
    assert isinstance(detail, str)
    assert detail.startswith('{"error":"this endpoint was removed"}')
    assert len(detail.encode()) == 1000
    assert len(target.requests) == 1

    async def recorded() -> bool:
        _, document = await conveyor.status(accepted.headers["Location"])
        return bool(document["subscriptions"]["gone"]["state"] == "dead-lettered")

    await eventually(recorded, what="the dead-lettered status")
    _, document = await conveyor.status(accepted.headers["Location"])
    assert document["subscriptions"]["gone"]["last_error"]["reason"] == "endpoint-gone"


async def test_a_failed_answer_body_goes_with_a_retry_and_a_dead_letter(
    start_conveyor: StartConveyor, namespace: Namespace, receiver: tuple[Receiver, str]
) -> None:
    target, url = receiver
    target.script = [(422, "unknown customer ü".encode())]
    conveyor = await start_conveyor((subscription("body", ("hook.*",), hook(url)),))
    assert (await conveyor.post({"type": "hook.x", "id": "body-1"})).status == 202

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("body"), 1)
    headers = dead.headers or {}
    assert headers["x-conveyor-reason"] == "permanent-error"
    assert headers["x-conveyor-error-detail"] == "unknown customer ü"


async def test_a_failing_endpoint_gets_n_requests_and_a_probe_per_cooldown_then_recovers(
    start_conveyor: StartConveyor, namespace: Namespace, receiver: tuple[Receiver, str]
) -> None:
    target, url = receiver
    target.then = 503
    failures, cooldown = 3, 1.0
    handler = hook(url, circuit_failures=failures, circuit_cooldown="1s")
    conveyor = await start_conveyor(
        (
            subscription(
                "circuit",
                ("hook.*",),
                handler,
                prefetch=4,
                concurrency=1,
                retry=RetryPolicy(1, (0.5,) * 20),
            ),
        ),
        admin_tokens=(("ops", "t" * 16),),
    )
    ids = [f"c-{n}" for n in range(8)]
    for event_id in ids:
        assert (await conveyor.post({"type": "hook.x", "id": event_id})).status == 202

    async def open_and_probed() -> bool:
        # The N failures that open it, then at least two probes a cool-down apart.
        return len(target.requests) >= failures + 2

    await eventually(open_and_probed, what="the circuit to open and probe twice", timeout=30)
    first_request = target.requests[0][0]
    sick_for = time.monotonic() - first_request
    made = len(target.requests)
    assert made <= failures + 1 + sick_for / cooldown, (made, sick_for)
    listing = await conveyor.client.get(
        "/v1/admin/subscriptions", headers={"Authorization": "Bearer " + "t" * 16}
    )
    [entry] = (await listing.json())["subscriptions"]
    assert entry["webhook"]["circuit"]["state"] in {"open", "half-open"}
    assert entry["webhook"]["endpoint"].startswith("http://127.0.0.1:")
    assert "/hook" not in entry["webhook"]["endpoint"]
    metrics = await (await conveyor.client.get("/metrics")).text()
    assert 'conveyor_webhook_circuit_state{subscription="circuit"}' in metrics

    target.then = 200  # the endpoint recovers: a probe closes the circuit, the rest follow

    async def all_delivered() -> bool:
        return set(target.ids_answered(200)) == set(ids)

    await eventually(all_delivered, what="every event delivered after recovery", timeout=60)
    assert await namespace.depth(namespace.topology.dead_letter_queue("circuit")) == 0
    listing = await conveyor.client.get(
        "/v1/admin/subscriptions", headers={"Authorization": "Bearer " + "t" * 16}
    )
    [entry] = (await listing.json())["subscriptions"]
    assert entry["webhook"]["circuit"]["state"] == "closed"
