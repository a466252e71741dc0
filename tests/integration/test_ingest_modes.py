"""Every HTTP ingest mode, end to end: the event reaches the handler with the right attributes."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_structured_mode_reaches_handler_with_every_attribute(
    start_conveyor: StartConveyor,
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("signups", ("user.*",), recorder),))
    event = CloudEvent(
        attributes={
            "id": "evt-structured-1",
            "source": "/accounts",
            "type": "user.signup",
            "subject": "user/42",
            "time": datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
            "datacontenttype": "application/json",
            "tenant": "acme",
        },
        data={"email": "ada@example.com"},
    )
    message = ce_http.to_structured(event, JSONFormat())
    response = await conveyor.client.post(
        "/v1/events",
        data=message.body,
        headers={**message.headers, "X-Correlation-ID": "corr-1", "traceparent": TRACEPARENT},
    )

    assert response.status == 202
    assert await response.json() == {
        "id": "evt-structured-1",
        "location": "/v1/events/evt-structured-1",
    }
    assert response.headers["Location"] == "/v1/events/evt-structured-1"
    assert response.headers["X-Correlation-ID"] == "corr-1"
    [received] = await recorder.wait_for(1)
    assert received.id == "evt-structured-1"
    assert received.source == "/accounts"
    assert received.type == "user.signup"
    assert received.subject == "user/42"
    assert received.time == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert received.datacontenttype == "application/json"
    assert received.data == {"email": "ada@example.com"}
    assert received.extensions == {"tenant": "acme"}
    assert received.correlation_id == "corr-1"


async def test_binary_mode_from_the_official_sdk_keeps_body_and_percent_decoded_attributes(
    start_conveyor: StartConveyor,
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("files", ("file.uploaded",), recorder),))
    event = CloudEvent(
        attributes={
            "id": "evt-binary-1",
            "source": "https://example.com/uploads?x=1",
            "type": "file.uploaded",
            "subject": "ünïcode name.txt",
            "datacontenttype": "text/plain; charset=utf-8",
        },
        data="hello, world",
    )
    message = ce_http.to_binary(event, JSONFormat())

    response = await conveyor.client.post("/v1/events", data=message.body, headers=message.headers)

    assert response.status == 202, await response.text()
    [received] = await recorder.wait_for(1)
    assert received.source == "https://example.com/uploads?x=1"
    assert received.subject == "ünïcode name.txt"
    assert received.datacontenttype == "text/plain; charset=utf-8"
    assert received.data == b"hello, world"


async def test_plain_json_gets_id_source_specversion_and_time_filled_in(
    start_conveyor: StartConveyor,
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("orders", ("order.#",), recorder),))

    response = await conveyor.post(
        {"type": "order.created.eu", "subject": "order/7", "data": {"total": 12.5}}
    )

    assert response.status == 202
    event_id = (await response.json())["id"]
    [received] = await recorder.wait_for(1)
    assert received.id == event_id
    assert received.source == "/conveyor/ingress"
    assert received.specversion == "1.0"
    assert received.time is not None
    assert received.subject == "order/7"
    assert received.data == {"total": 12.5}
    assert received.datacontenttype == "application/json"


async def test_batch_answers_one_result_per_entry_and_a_bad_entry_does_not_sink_the_rest(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("batch", ("batch.*",), recorder),))
    good = {"specversion": "1.0", "source": "/b", "type": "batch.item"}
    batch = [
        {**good, "id": "b-1", "data": 1},
        {**good, "id": "b-2", "specversion": "0.1"},
        {**good, "id": "b-3", "data_base64": "aGk=", "datacontenttype": "application/octet-stream"},
    ]

    response = await conveyor.post(batch, "application/cloudevents-batch+json")

    assert response.status == 207
    results = (await response.json())["results"]
    assert results[0] == {"id": "b-1", "location": "/v1/events/b-1"}
    assert results[1]["error"]["status"] == 400
    assert results[1]["error"]["attribute"] == "specversion"
    assert results[2] == {"id": "b-3", "location": "/v1/events/b-3"}
    received = await recorder.wait_for(2)
    assert sorted(event.id for event in received) == ["b-1", "b-3"]
    assert {event.id: event.data for event in received} == {"b-1": 1, "b-3": b"hi"}


async def test_an_all_good_batch_is_202(start_conveyor: StartConveyor) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("batch", ("batch.*",), recorder),))
    batch = [
        {"specversion": "1.0", "source": "/b", "type": "batch.item", "id": f"ok-{n}"}
        for n in range(20)
    ]

    response = await conveyor.post(batch, "application/cloudevents-batch+json")

    assert response.status == 202
    assert [r["id"] for r in (await response.json())["results"]] == [f"ok-{n}" for n in range(20)]
    assert sorted(e.id for e in await recorder.wait_for(20)) == sorted(f"ok-{n}" for n in range(20))


async def test_the_amqp_message_is_binary_mode_with_message_id_and_trace_headers(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    # No subscription binds this type, so the message waits in the unrouted queue for us to read.
    conveyor = await start_conveyor()
    response = await conveyor.client.post(
        "/v1/events",
        data=orjson.dumps({"type": "nobody.listens", "id": "wire-1", "data": {"a": 1}}),
        headers={
            "Content-Type": "application/json",
            "X-Correlation-ID": "corr-wire",
            "traceparent": TRACEPARENT,
        },
    )
    assert response.status == 202

    [message] = await namespace.take_all(namespace.topology.unrouted)
    assert message.message_id == "wire-1"
    assert message.correlation_id == "corr-wire"
    assert message.delivery_mode == 2  # persistent
    assert message.content_type == "application/json"
    assert message.routing_key == "nobody.listens"
    assert message.headers is not None
    assert message.headers["ce-id"] == "wire-1"
    assert message.headers["ce-type"] == "nobody.listens"
    assert message.headers["ce-specversion"] == "1.0"
    assert message.headers["traceparent"] == TRACEPARENT
    assert orjson.loads(message.body) == {"a": 1}


async def test_an_event_no_subscription_binds_is_kept_in_the_unrouted_queue(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("users", ("user.*",), recorder),))

    response = await conveyor.post({"type": "invoice.paid", "id": "lonely-1"})

    assert response.status == 202
    [kept] = await namespace.take_all(namespace.topology.unrouted)
    assert kept.message_id == "lonely-1"
    assert recorder.events == []
