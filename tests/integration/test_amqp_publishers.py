"""Events published straight to RabbitMQ by other services are processed like HTTP ones."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from producers import EventClient
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder


async def test_the_python_client_publishes_with_the_contract(
    start_conveyor: StartConveyor, namespace: Namespace, amqp_url: str
) -> None:
    recorder = Recorder()
    await start_conveyor((subscription("client", ("user.*",), recorder),))

    async with EventClient(amqp_url, namespace=namespace.name) as client:
        event_id = await client.send(
            "user.signup", {"email": "x@y.z"}, source="/accounts", subject="user/1"
        )

    [received] = await recorder.wait_for(1)
    assert received.id == event_id
    assert received.source == "/accounts"
    assert received.subject == "user/1"
    assert received.data == {"email": "x@y.z"}


async def test_the_official_sdk_rabbitmq_binding_in_binary_and_structured_mode(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    await start_conveyor((subscription("sdk", ("sdk.*",), recorder),))
    attributes = {
        "source": "/sdk",
        "type": "sdk.made",
        "time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "traceid": "abc",
    }
    binary = ce_rabbitmq.to_binary(
        CloudEvent(attributes={**attributes, "id": "sdk-binary"}, data={"n": 1}), JSONFormat()
    )
    structured = ce_rabbitmq.to_structured(
        CloudEvent(attributes={**attributes, "id": "sdk-structured"}, data={"n": 2}), JSONFormat()
    )

    for message in (binary, structured):
        await namespace.publish_raw(
            message.body,
            routing_key="sdk.made",
            headers=message.headers,
            content_type=message.content_type,
        )

    received = {event.id: event for event in await recorder.wait_for(2)}
    assert received["sdk-binary"].data == {"n": 1}
    assert received["sdk-structured"].data == {"n": 2}
    for event in received.values():
        assert event.source == "/sdk"
        assert event.time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert event.extensions == {"traceid": "abc"}


async def test_amqp_binding_prefixes_cloudevents_underscore_and_colon(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    await start_conveyor((subscription("prefixes", ("legacy.*",), recorder),))
    for prefix, event_id in (("cloudEvents_", "underscore"), ("cloudEvents:", "colon")):
        await namespace.publish_raw(
            b"plain bytes",
            routing_key="legacy.event",
            content_type="application/octet-stream",
            headers={
                f"{prefix}specversion": "1.0",
                f"{prefix}id": event_id,
                f"{prefix}source": "/legacy",
                f"{prefix}type": "legacy.event",
                f"{prefix}time": datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC),
            },
        )

    received = {event.id: event for event in await recorder.wait_for(2)}
    assert set(received) == {"underscore", "colon"}
    assert received["colon"].data == b"plain bytes"
    assert received["colon"].time == datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


async def test_a_message_that_breaks_the_contract_is_dead_lettered_not_dropped(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    await start_conveyor((subscription("strict", ("strict.*",), recorder),))

    # No ce-id; then a JSON content type whose body is not JSON; then a good one as a marker.
    await namespace.publish_raw(
        b"{}",
        routing_key="strict.one",
        content_type="application/json",
        headers={"ce-specversion": "1.0", "ce-source": "/x", "ce-type": "strict.one"},
        message_id="no-id",
    )
    await namespace.publish_raw(
        b"not json",
        routing_key="strict.two",
        content_type="application/json",
        headers={"ce-specversion": "1.0", "ce-id": "bad-json", "ce-source": "/x", "ce-type": "t"},
        message_id="bad-json",
    )
    await namespace.publish_raw(
        orjson.dumps({"ok": True}),
        routing_key="strict.three",
        content_type="application/json",
        headers={"ce-specversion": "1.0", "ce-id": "good", "ce-source": "/x", "ce-type": "t"},
    )

    await recorder.wait_for(1)
    assert recorder.ids() == ["good"]
    dead = await namespace.take_at_least(namespace.topology.dead_letter_queue("strict"), 2)
    assert sorted(message.message_id or "" for message in dead) == ["bad-json", "no-id"]
    bad_json = next(message for message in dead if message.message_id == "bad-json")
    assert bad_json.body == b"not json"  # kept as it was sent
    for message in dead:
        headers = message.headers or {}
        assert headers["x-conveyor-reason"] == "malformed"
        assert headers["x-conveyor-error-class"] == "MalformedEventError"
    assert "not valid JSON" in str((bad_json.headers or {})["x-conveyor-error-message"])
    assert await namespace.depth(namespace.topology.queue("strict")) == 0
