"""The AsyncAPI document describes the running service: a message built from it alone reaches
the subscription's handler, every queue it names exists on the broker, and `conveyor asyncapi`
prints it without a broker."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import orjson
import pytest
from aio_pika.abc import FieldValue

from consumers.ordering import Ordering
from consumers.retry import RetryPolicy
from service.http.asyncapi import asyncapi_document
from tests.conftest import StartConveyor, subscription
from tests.support.asyncapi_schema import asyncapi_complaints
from tests.support.namespace import Namespace
from tests.support.processes import ROOT
from tests.support.recorder import Recorder
from tests.support.typed_handlers import Signup, SignupRecorder


def _resolve(document: dict[str, Any], reference: dict[str, Any]) -> Any:
    node: Any = document
    for part in reference["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    return node


def _header_value(name: str) -> str:
    return {"ce-specversion": "1.0", "ce-type": "user.signup"}.get(
        name, f"from-the-document-{name}"
    )


async def test_a_message_built_from_the_served_document_reaches_the_handler(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    signups = SignupRecorder()
    typed = subscription("signups", ("user.signup",), signups)
    audit = subscription("audit", ("#",), Recorder())
    conveyor = await start_conveyor((typed, audit))

    response = await conveyor.client.get("/asyncapi.json")

    assert response.status == 200
    assert response.content_type == "application/json"
    document = await response.json()
    assert document == orjson.loads(
        orjson.dumps(asyncapi_document(conveyor.settings, (typed, audit)))
    )
    assert asyncapi_complaints(document) == []
    # Everything below is read from the document: exchange, routing key, headers, body.
    publish = document["operations"]["publishEvent"]
    channel = _resolve(document, publish["channel"])
    exchange = channel["bindings"]["amqp"]["exchange"]["name"]
    message = _resolve(document, document["channels"]["signups"]["messages"]["event"])
    required = _resolve(document, message["headers"])["required"]
    headers: dict[str, FieldValue] = {name: _header_value(name) for name in required}
    payload = _resolve(document, message["payload"])
    assert payload["required"] == ["email"]
    body = {"email": "ada@example.com"}
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        amqp_channel = await connection.channel(publisher_confirms=True)
        target = await amqp_channel.get_exchange(exchange, ensure=True)
        await target.publish(
            aio_pika.Message(
                orjson.dumps(body),
                headers=headers,
                content_type=message["contentType"],
                delivery_mode=aio_pika.DeliveryMode(publish["bindings"]["amqp"]["deliveryMode"]),
            ),
            routing_key=str(headers["ce-type"]),
            mandatory=publish["bindings"]["amqp"]["mandatory"],
        )

    [event] = await signups.wait_for(1)
    assert (event.id, event.source, event.type) == (
        "from-the-document-ce-id",
        "from-the-document-ce-source",
        "user.signup",
    )
    assert event.data == Signup.model_validate(body)  # validated into the declared model


async def test_every_queue_the_document_names_exists_once_conveyor_started(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    plain = subscription("plain", ("a.*",), Recorder(), retry=RetryPolicy(1, (5.0, 60.0)))
    ordered = replace(subscription("keyed", ("b.#",), Recorder()), ordering=Ordering("subject", 2))
    conveyor = await start_conveyor((plain, ordered))
    document = await (await conveyor.client.get("/asyncapi.json")).json()
    queues = _queue_names(document)

    ns = namespace.name
    assert queues == {
        f"{ns}.unrouted",
        *(f"{ns}.plain{suffix}" for suffix in ("", ".retry.5s", ".retry.1m", ".dlq")),
        *(f"{ns}.keyed{suffix}" for suffix in (".p0", ".p1", ".dlq")),
    }
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        for queue in sorted(queues):
            channel = await connection.channel()
            try:
                await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                pytest.fail(f"the document names {queue}, which does not exist")


def _queue_names(document: dict[str, Any]) -> set[str]:
    names = set()
    for channel in document["channels"].values():
        if channel["bindings"]["amqp"]["is"] != "queue":
            continue
        partitions = channel.get("parameters", {}).get("partition", {}).get("enum")
        if partitions is None:
            names.add(channel["address"])
        else:
            names.update(channel["address"].replace("{partition}", p) for p in partitions)
    return names


def test_conveyor_asyncapi_prints_the_document_without_a_broker(tmp_path: Path) -> None:
    config = tmp_path / "subscriptions.toml"
    config.write_text(
        '[[subscriptions]]\nname = "welcome"\nevents = ["user.signup"]\n'
        'handler = "tests.support.typed_handlers:welcome"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "asyncapi"],
        env={
            **os.environ,
            "CONVEYOR_CONFIG": str(config),
            "CONVEYOR_NAMESPACE": "shop",
            # Nothing listens there: the command must not try.
            "CONVEYOR_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert asyncapi_complaints(document) == []
    assert document["channels"]["welcome"]["address"] == "shop.welcome"
    assert document["components"]["schemas"]["Signup"]["required"] == ["email"]
    assert "guest" not in result.stdout
