"""Typed payloads on the real broker: a handler taking Event[Model] gets its data validated into
a Model (a pydantic model, a dataclass, a TypedDict); data that does not validate goes to the
dead-letter queue at once with reason invalid-data and the errors, and its handler never runs."""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from consumers import Event
from consumers.dead_letter import ATTEMPTS, ERROR_CLASS, ERROR_MESSAGE, REASON
from service import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder

PROBLEM = "application/problem+json"


class Signup(pydantic.BaseModel):
    email: str
    age: int
    plan: str = "free"


@dataclasses.dataclass
class Refund:
    order: str
    cents: int


class Shipment(TypedDict):
    parcel: str
    weight: float


class SignupRecorder(Recorder):
    async def __call__(self, event: Event[Signup]) -> None:
        await super().__call__(event)


class RefundRecorder(Recorder):
    async def __call__(self, event: Event[Refund]) -> None:
        await super().__call__(event)


class ShipmentRecorder(Recorder):
    async def __call__(self, event: Event[Shipment]) -> None:
        await super().__call__(event)


async def _publish(conveyor: Running, event_id: str, event_type: str, data: Any) -> None:
    document = {"id": event_id, "source": "/tests", "type": event_type, "data": data}
    response = await conveyor.post(document)
    assert response.status == 202, await response.text()


async def test_a_typed_handler_gets_its_data_as_a_model_instance(
    start_conveyor: StartConveyor,
) -> None:
    signups, refunds, shipments = SignupRecorder(), RefundRecorder(), ShipmentRecorder()
    conveyor = await start_conveyor(
        (
            subscription("signups", ("user.signup",), signups),
            subscription("refunds", ("order.refunded",), refunds),
            subscription("shipments", ("order.shipped",), shipments),
        )
    )
    await _publish(conveyor, "s-1", "user.signup", {"email": "ada@example.com", "age": "36"})
    await _publish(conveyor, "r-1", "order.refunded", {"order": "o-7", "cents": 1250})
    await _publish(conveyor, "p-1", "order.shipped", {"parcel": "p-9", "weight": 2})

    [signup] = await signups.wait_for(1)
    assert signup.data == Signup(email="ada@example.com", age=36, plan="free")
    assert isinstance(signup.data, Signup)
    assert signup.raw_data  # the bytes as they arrived are still there
    [refund] = await refunds.wait_for(1)
    assert refund.data == Refund(order="o-7", cents=1250)
    [shipment] = await shipments.wait_for(1)
    assert shipment.data == {"parcel": "p-9", "weight": 2.0}
    assert isinstance(shipment.data["weight"], float)


async def test_an_untyped_handler_gets_the_parsed_json_as_before(
    start_conveyor: StartConveyor,
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("signups", ("user.signup",), recorder),))
    await _publish(conveyor, "u-1", "user.signup", {"email": "ada@example.com", "age": "36"})
    [event] = await recorder.wait_for(1)
    assert event.data == {"email": "ada@example.com", "age": "36"}


async def test_data_that_does_not_validate_is_dead_lettered_at_once_with_its_errors(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    signups = SignupRecorder()
    conveyor = await start_conveyor((subscription("signups", ("user.signup",), signups),))
    await _publish(conveyor, "bad-1", "user.signup", {"age": "old", "password": "hunter2"})
    await _publish(conveyor, "bad-2", "user.signup", ["not", "an", "object"])
    await _publish(conveyor, "good-1", "user.signup", {"email": "ada@example.com", "age": 36})

    [dead_1, dead_2] = sorted(
        await namespace.take_at_least(namespace.topology.dead_letter_queue("signups"), 2),
        key=lambda message: message.message_id or "",
    )
    assert [dead_1.message_id, dead_2.message_id] == ["bad-1", "bad-2"]
    headers = dead_1.headers or {}
    assert headers[REASON] == "invalid-data"
    assert headers[ERROR_CLASS] == "InvalidDataError"
    assert headers[ATTEMPTS] == 0
    message = str(headers[ERROR_MESSAGE])
    assert "data.email: Field required" in message
    assert "data.age: Input should be a valid integer" in message
    assert "hunter2" not in message  # the errors name fields, never the input
    assert "data: Input should be an object" in str((dead_2.headers or {})[ERROR_MESSAGE])

    status, found = await conveyor.status("/v1/events/bad-1", wait="10s")
    assert status == 200, found
    entry = found["subscriptions"]["signups"]
    assert (entry["state"], entry["attempts"]) == ("dead-lettered", 0)
    assert entry["last_error"]["reason"] == "invalid-data"
    assert "data.email: Field required" in entry["last_error"]["message"]

    # The good one, published last, is handled; the two before it never reached the handler.
    await signups.wait_for(1)
    status, found = await conveyor.status("/v1/events/good-1", wait="10s")
    assert found["state"] == "succeeded", found
    assert signups.ids() == ["good-1"]
    assert signups.started == 1


async def test_a_subscription_can_have_the_ingress_refuse_data_its_handler_would_not_take(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    checked = dataclasses.replace(
        subscription("signups", ("user.*",), SignupRecorder()), validate_at_ingress=True
    )
    unchecked = subscription("refunds", ("order.refunded",), RefundRecorder())
    conveyor = await start_conveyor((checked, unchecked), role=Role.INGRESS)

    refused = await conveyor.post(
        {"id": "bad-1", "source": "/tests", "type": "user.signup", "data": {"age": "x"}}
    )
    assert refused.status == 422, await refused.text()
    problem = await refused.json(content_type=PROBLEM)
    assert problem["type"] == "urn:conveyor:problem:invalid-data"
    assert problem["subscription"] == "signups"
    assert problem["errors"] == [
        {"path": "data.email", "message": "Field required"},
        {
            "path": "data.age",
            "message": "Input should be a valid integer, unable to parse string as an integer",
        },
    ]
    # The refunds subscription did not ask: its handler's model is not checked at the door.
    await _publish(conveyor, "r-1", "order.refunded", {"nothing": "valid"})
    batch = await conveyor.post(
        [
            {"specversion": "1.0", "id": "b-1", "source": "/t", "type": "user.signup"}
            | {"data": {"email": "ada@example.com", "age": 36}},
            {"specversion": "1.0", "id": "b-2", "source": "/t", "type": "user.renamed"}
            | {"data": {"email": "ada@example.com"}},
        ],
        content_type="application/cloudevents-batch+json",
    )
    assert batch.status == 207, await batch.text()
    accepted, rejected = (await batch.json())["results"]
    assert accepted["id"] == "b-1"
    assert rejected["error"]["type"] == "urn:conveyor:problem:invalid-data"
    assert rejected["error"]["errors"] == [{"path": "data.age", "message": "Field required"}]

    queued = await namespace.take_at_least(namespace.topology.queue("signups"), 1)
    assert [message.message_id for message in queued] == ["b-1"]
    refunds = await namespace.take_at_least(namespace.topology.queue("refunds"), 1)
    assert [message.message_id for message in refunds] == ["r-1"]
