"""The AsyncAPI 3.0 document of the AMQP side, built from the settings and the subscriptions.

What `GET /openapi.json` is to the HTTP side: the events exchange and the ingress that publishes
to it, one receive operation per subscription (its queue, or its partitions, and its patterns),
its retry tiers and dead-letter queue, the results exchange, CloudEvents headers as message
headers, and each typed handler's payload as JSON Schema (pydantic's). Names come from
`producers.topology.Topology` and the subscription's own helpers, as the declarations do
(tests/unit/test_asyncapi_document.py checks the two against `conveyor topology`); the
channels and operations are in `asyncapi_channels`, the messages in `asyncapi_messages`.
No credentials and no handler paths: the document is served without a token, as the OpenAPI
one is.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import orjson
from aiohttp import web
from pydantic import PydanticUserError, TypeAdapter
from yarl import URL

from consumers.payloads import payload_adapter
from consumers.subscription import Subscription
from producers.topology import Topology
from service.http.asyncapi_channels import COMPLETION_STATES, ChannelBuilder, completion_key
from service.http.asyncapi_messages import (
    CLOUD_EVENT_HEADERS,
    COMPLETION_PAYLOAD,
    EVENT_MESSAGE,
    FAILURE_HEADERS,
    completion_message,
    dead_letter_message,
    event_message,
    retry_message,
)
from service.settings import Settings
from service.subscription_config import with_completions

__all__ = ["ASYNCAPI_PATH", "add_asyncapi_route", "asyncapi_document"]

ASYNCAPI_PATH = "/asyncapi.json"
ASYNCAPI_VERSION = "3.0.0"
_SERVED_DOCUMENT = web.AppKey("asyncapi_document", bytes)
_SCHEMAS = "#/components/schemas/"


def add_asyncapi_route(
    app: web.Application, settings: Settings, subscriptions: Sequence[Subscription]
) -> None:
    """Register GET /asyncapi.json; the document is built once, here."""
    app[_SERVED_DOCUMENT] = orjson.dumps(asyncapi_document(settings, subscriptions))
    app.router.add_get(ASYNCAPI_PATH, serve_asyncapi_document)


async def serve_asyncapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_SERVED_DOCUMENT], content_type="application/json")


def asyncapi_document(settings: Settings, subscriptions: Sequence[Subscription]) -> dict[str, Any]:
    subscriptions = with_completions(subscriptions, default=settings.completions)
    topology = Topology(settings.namespace)
    vhost = _vhost(settings.amqp_addresses[0])
    payloads, schemas = _payload_schemas(subscriptions)
    builder = ChannelBuilder(topology, vhost)
    builder.add_events()
    for subscription in subscriptions:
        builder.add_subscription(subscription, payloads.get(subscription.name, {}))
    builder.add_results([s.name for s in subscriptions if s.completions])
    messages = {
        EVENT_MESSAGE: event_message(
            EVENT_MESSAGE, {}, summary="Any event: the data as its publisher wrote it."
        ),
        "retry": retry_message(),
        "deadLetter": dead_letter_message(),
        **{completion_key(state): completion_message(state) for state in COMPLETION_STATES},
        **builder.messages,
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"conveyor: namespace {settings.namespace}",
            "version": version("conveyor"),
            "description": "Events on RabbitMQ: publish a CloudEvent to the events exchange "
            "with the event type as routing key; each subscription receives the events its "
            "patterns match, retries them in TTL tiers and dead-letters what fails; completion "
            "events go to the results exchange.",
        },
        "defaultContentType": "application/json",
        "servers": _servers(settings.amqp_addresses),
        "channels": builder.channels,
        "operations": builder.operations,
        "components": {
            "schemas": {
                "CloudEventHeaders": CLOUD_EVENT_HEADERS,
                "FailureHeaders": FAILURE_HEADERS,
                "Completion": COMPLETION_PAYLOAD,
                **schemas,
            },
            "messages": messages,
        },
    }


def _servers(addresses: Sequence[str]) -> dict[str, Any]:
    """Each broker node, by host and port only: no user, password or query."""
    servers = {}
    for index, address in enumerate(addresses, start=1):
        url = URL(address)
        host = url.host or ""
        servers[f"rabbitmq{index}" if len(addresses) > 1 else "rabbitmq"] = {
            "host": f"{host}:{url.port}" if url.port is not None else host,
            "protocol": url.scheme,
            "protocolVersion": "0-9-1",
            "bindings": {"amqp": {}},
        }
    return servers


def _vhost(address: str) -> str:
    # As aiormq reads it: the path without its leading slash, "/" when empty.
    return URL(address).path[1:] or "/"


def _payload_schemas(
    subscriptions: Sequence[Subscription],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each typed subscription's payload schema, its definitions shared in components."""
    adapters: list[tuple[str, TypeAdapter[Any]]] = []
    unschematic: dict[str, dict[str, Any]] = {}
    for subscription in subscriptions:
        try:
            adapter = payload_adapter(subscription.handler)
            if adapter is not None:
                adapter.json_schema()
        except PydanticUserError as error:  # a type pydantic takes but cannot describe
            unschematic[subscription.name] = {"description": f"no JSON Schema: {error.code}"}
            continue
        if adapter is not None:
            adapters.append((subscription.name, adapter))
    if not adapters:
        return unschematic, {}
    # One pass over every model, so two models of one name get distinct definitions.
    mapping, definitions = TypeAdapter.json_schemas(
        [(name, "validation", adapter) for name, adapter in adapters],
        ref_template=_SCHEMAS + "{model}",
    )
    payloads = {name: mapping[name, "validation"] for name, _ in adapters} | unschematic
    return payloads, dict(definitions.get("$defs", {}))
