"""The AsyncAPI document: valid AsyncAPI 3.0 (the specification's own JSON Schema), the same
names and patterns as what conveyor declares, typed payloads as pydantic's JSON Schema, and no
credentials."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import TypeAdapter

from consumers.ordering import Ordering
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from producers.topology import Topology
from service.broker.topology_plan import plan_topology
from service.http.asyncapi import asyncapi_document
from service.settings import Settings
from tests.support import typed_handlers
from tests.support.asyncapi_schema import asyncapi_complaints
from tests.support.typed_handlers import Signup

SETTINGS = replace(
    Settings(),
    namespace="shop",
    amqp_url="amqp://conveyor:s3cret-pass@rabbit-1.internal:5673/prod?heartbeat=30,"
    "amqp://conveyor:s3cret-pass@rabbit-2.internal:5673/prod?heartbeat=30",
)


def _subscription(name: str, events: tuple[str, ...], handler: Any, **fields: Any) -> Subscription:
    fields.setdefault("completions", True)  # opt-in; the test shows who publishes them
    return Subscription(name, events, handler, f"tests.support.typed_handlers:{name}", **fields)


SUBSCRIPTIONS = (
    _subscription(
        "welcome", ("user.signup",), typed_handlers.welcome, retry=RetryPolicy(2, (1.0, 60.0))
    ),
    _subscription("refunds", ("order.refund.*", "payment.#"), typed_handlers.refund),
    _subscription(
        "shipping",
        ("order.shipped",),
        typed_handlers.ShipmentNotifier(),
        ordering=Ordering("partitionkey", 3),
        completions=False,
    ),
    _subscription("audit", ("#",), typed_handlers.untyped, retry=RetryPolicy(1, ())),
)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document(SETTINGS, SUBSCRIPTIONS)


def test_the_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert asyncapi_complaints(document) == []


def test_the_schema_check_catches_an_invalid_document(document: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(document))
    broken["operations"]["welcome.receive"]["action"] = "consume"
    broken["channels"]["events"]["bindings"]["amqp"]["exchange"]["type"] = "x-consistent-hash"

    complaints = asyncapi_complaints(broken)

    assert any(line.startswith("operations/welcome.receive") for line in complaints)
    # A binding's mistake is reported at its channel (the channel is one of two shapes).
    assert any(line.startswith("channels/events:") for line in complaints)


def test_each_subscription_has_one_receive_operation_on_its_queue_with_its_patterns(
    document: dict[str, Any],
) -> None:
    receives = {
        key: operation
        for key, operation in document["operations"].items()
        if operation["action"] == "receive"
    }

    assert set(receives) == {f"{s.name}.receive" for s in SUBSCRIPTIONS}
    for subscription in SUBSCRIPTIONS:
        operation = receives[f"{subscription.name}.receive"]
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[1]]
        assert channel["x-conveyor-patterns"] == list(subscription.events)
        assert operation["x-conveyor-subscription"]["patterns"] == list(subscription.events)
        assert operation["bindings"]["amqp"]["ack"] is True
    assert document["channels"]["welcome"]["address"] == "shop.welcome"
    assert document["channels"]["welcome"]["bindings"]["amqp"]["is"] == "queue"
    assert document["channels"]["shipping"]["address"] == "shop.shipping.p{partition}"
    assert document["channels"]["shipping"]["parameters"]["partition"]["enum"] == ["0", "1", "2"]


async def test_every_queue_and_exchange_declared_is_in_the_document(
    document: dict[str, Any],
) -> None:
    declared = await plan_topology(Topology("shop"), SUBSCRIPTIONS)
    queues = {entity["name"] for entity in declared if entity["kind"] == "queue"}
    addresses: set[str] = set()
    exchanges: set[str] = set()
    for channel in document["channels"].values():
        amqp = channel["bindings"]["amqp"]
        if amqp["is"] == "queue":
            partitions = channel.get("parameters", {}).get("partition", {}).get("enum", [None])
            addresses.update(
                channel["address"].replace("{partition}", p) if p else channel["address"]
                for p in partitions
            )
        else:
            exchanges.add(amqp["exchange"]["name"])
        exchanges.update(filter(None, [channel.get("x-conveyor-partitions", {}).get("exchange")]))
    described = json.dumps(document["channels"]) + json.dumps(
        document["operations"]
    )  # the dead-letter exchange is named in the DLQ channels' descriptions

    assert addresses == queues
    assert exchanges | {"shop.dlx", "shop.unrouted"} == {
        entity["name"] for entity in declared if entity["kind"] == "exchange"
    }
    assert "`shop.dlx`" in described
    bindings = {
        (entity.get("queue") or entity.get("destination"), entity["routing_key"])
        for entity in declared
        if entity["kind"] in ("binding", "exchange-binding") and entity["exchange"] == "shop.events"
    }
    for subscription in SUBSCRIPTIONS:
        target = (
            f"shop.{subscription.name}"
            if subscription.ordering is None
            else f"shop.{subscription.name}.partitions"
        )
        assert {(target, pattern) for pattern in subscription.events} <= bindings


def test_retry_tiers_and_dead_letter_queues_have_their_send_operations(
    document: dict[str, Any],
) -> None:
    operations = document["operations"]

    assert document["channels"]["welcome.retry.1m"]["address"] == "shop.welcome.retry.1m"
    assert document["channels"]["welcome.retry.1m"]["x-conveyor-delay-ms"] == 60_000
    assert operations["welcome.retry.1s"]["action"] == "send"
    assert operations["welcome.deadLetter"]["channel"] == {"$ref": "#/channels/welcome.dlq"}
    assert document["channels"]["welcome.dlq"]["address"] == "shop.welcome.dlq"
    # An ordered subscription waits its retries out in process: no tier queues.
    assert not any(key.startswith("shipping.retry") for key in operations)
    assert "shipping.deadLetter" in operations
    dead_headers = document["components"]["messages"]["deadLetter"]["headers"]["allOf"]
    assert "x-conveyor-reason" in dead_headers[2]["properties"]


def test_messages_carry_the_cloudevents_headers_conveyor_writes(
    document: dict[str, Any],
) -> None:
    headers = document["components"]["schemas"]["CloudEventHeaders"]

    assert headers["required"] == ["ce-id", "ce-source", "ce-type", "ce-specversion"]
    assert {"ce-time", "ce-subject", "traceparent"} <= set(headers["properties"])
    publish = document["operations"]["publishEvent"]
    assert publish["action"] == "send"
    assert publish["bindings"]["amqp"] == {
        "deliveryMode": 2,
        "mandatory": True,
        "bindingVersion": "0.3.0",
    }
    events = document["channels"]["events"]["bindings"]["amqp"]["exchange"]
    assert events == {
        "name": "shop.events",
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "prod",
    }


def test_completions_name_only_the_subscriptions_that_publish_them(
    document: dict[str, Any],
) -> None:
    results = document["channels"]["results"]

    assert results["bindings"]["amqp"]["exchange"]["name"] == "shop.results"
    assert results["parameters"]["subscription"]["enum"] == ["welcome", "refunds", "audit"]
    assert results["parameters"]["completionType"]["enum"] == [
        "conveyor.event.succeeded",
        "conveyor.event.dead_lettered",
    ]
    quiet = [replace(s, completions=False) for s in SUBSCRIPTIONS]
    assert "publishCompletion" not in asyncapi_document(SETTINGS, quiet)["operations"]


def _resolve(document: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    node: Any = document
    for part in reference["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def _payload_validator(document: dict[str, Any], subscription: str) -> jsonschema.Validator:
    """A validator for the payload of `subscription`'s message, its references resolved
    within the document."""
    channel = document["channels"][subscription]
    message = _resolve(document, channel["messages"]["event"])
    root = {**document, **message["payload"]}
    return jsonschema.Draft202012Validator(root)


def test_a_typed_payload_is_pydantics_json_schema_with_its_definitions_in_components(
    document: dict[str, Any],
) -> None:
    expected = TypeAdapter(Signup).json_schema(ref_template="#/components/schemas/{model}")
    definitions = expected.pop("$defs")
    message = document["components"]["messages"]["welcome.event"]

    assert message["payload"] == {"$ref": "#/components/schemas/Signup"}
    assert _resolve(document, message["payload"]) == expected
    assert document["components"]["schemas"]["Address"] == definitions["Address"]
    valid = _payload_validator(document, "welcome")
    assert valid.is_valid(
        {"email": "ada@example.com", "address": {"city": "L", "postcode": "N1 9GU"}}
    )
    assert not valid.is_valid({"email": "ada@example.com", "address": {"city": "L"}})
    assert not valid.is_valid({"name": "no email"})
    refunds = _resolve(document, document["components"]["messages"]["refunds.event"]["payload"])
    assert refunds["required"] == ["order_id", "amount_cents"]
    assert document["components"]["messages"]["audit.event"]["payload"] == {}


def test_servers_name_hosts_and_ports_but_no_credentials(document: dict[str, Any]) -> None:
    text = orjson.dumps(document).decode()

    assert document["servers"] == {
        "rabbitmq1": {
            "host": "rabbit-1.internal:5673",
            "protocol": "amqp",
            "protocolVersion": "0-9-1",
            "bindings": {"amqp": {}},
        },
        "rabbitmq2": {
            "host": "rabbit-2.internal:5673",
            "protocol": "amqp",
            "protocolVersion": "0-9-1",
            "bindings": {"amqp": {}},
        },
    }
    assert "s3cret-pass" not in text
    assert "@rabbit" not in text
    assert "heartbeat" not in text
    assert "tests.support.typed_handlers" not in text  # handler paths stay inside


def test_a_type_without_a_json_schema_is_described_as_such_and_the_rest_stands() -> None:
    opaque = _subscription("opaque", ("x.y",), typed_handlers.opaque)

    document = asyncapi_document(SETTINGS, (*SUBSCRIPTIONS, opaque))

    assert asyncapi_complaints(document) == []
    assert document["components"]["messages"]["opaque.event"]["payload"] == {
        "description": "no JSON Schema: invalid-for-json-schema"
    }
    assert "Signup" in document["components"]["schemas"]
