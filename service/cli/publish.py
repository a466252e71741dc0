"""`conveyor publish`: an event from arguments, or the CloudEvent(s) of `--file`, sent over HTTP
(the ingress answers for each) or straight to RabbitMQ with `--amqp`."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any, TextIO

import orjson

from producers import EventClient, OutgoingEvent, PublishError
from producers.formats import event_from_json
from service.broker.addresses import split_broker_urls
from service.cli.http_client import (
    EXIT_ANSWERED_ERROR,
    EXIT_UNREACHABLE,
    UsageError,
    ask,
    complain,
    finish,
    print_json,
)

__all__ = ["publish_command"]


async def publish_command(arguments: argparse.Namespace, out: TextIO) -> int:
    documents, batch = _documents(arguments)
    events = _events(documents, arguments, batch=batch)
    if arguments.amqp:
        return await _publish_amqp(arguments, events, out)
    content_type = "application/cloudevents-batch+json" if batch else "application/cloudevents+json"
    answer = await ask(
        arguments,
        "POST",
        "/v1/events",
        raw_body=orjson.dumps(documents if batch else documents[0]),
        content_type=content_type,
    )
    results = answer.document.get("results")
    if not batch or not isinstance(results, list):
        return finish(arguments, answer, out, _print_accepted)
    # A batch: each entry has its own answer, in the order of the file.
    if arguments.json:
        print_json(answer.document, out)
    refused = 0
    for index, result in enumerate(results):
        problem = result.get("error") if isinstance(result, dict) else None
        if problem is None:
            if not arguments.json:
                out.write(f"{result['id']} {result['location']}\n")
            continue
        refused += 1
        complain(
            f"--file {arguments.file} entry {index} (id {documents[index].get('id')}): "
            f"{problem.get('status')} {problem.get('title')}: {problem.get('detail')}"
        )
    if refused:
        complain(f"{refused} of the {len(results)} events were not accepted")
    return EXIT_ANSWERED_ERROR if refused or answer.failed else 0


def _documents(arguments: argparse.Namespace) -> tuple[list[Any], bool]:
    if arguments.file is not None:
        if arguments.type or arguments.data is not None or arguments.id or arguments.subject:
            raise UsageError("--file holds the whole event: no type, --data, --id or --subject")
        return _file_documents(arguments.file)
    if not arguments.type:
        raise UsageError("give an event type, or --file")
    document: dict[str, Any] = {
        "specversion": "1.0",
        "type": arguments.type,
        "source": arguments.source,
        "id": arguments.id or str(uuid.uuid4()),
    }
    if arguments.subject:
        document["subject"] = arguments.subject
    if arguments.data is not None:
        try:
            document["data"] = orjson.loads(arguments.data)
        except orjson.JSONDecodeError as error:
            raise UsageError(f"--data: not JSON: {error}") from None
        document["datacontenttype"] = "application/json"
    return [document], False


def _file_documents(file: Path) -> tuple[list[Any], bool]:
    try:
        loaded = orjson.loads(file.read_bytes())
    except OSError as error:
        raise UsageError(f"--file {file}: {error.strerror or error}") from None
    except orjson.JSONDecodeError as error:
        raise UsageError(f"--file {file}: not JSON: {error}") from None
    if not isinstance(loaded, list):
        return [loaded], False
    if not loaded:
        raise UsageError(f"--file {file}: an empty batch")
    return loaded, True


def _events(
    documents: list[Any], arguments: argparse.Namespace, *, batch: bool
) -> list[OutgoingEvent]:
    """Each document as an event; UsageError naming the batch entry (from 0) that is not one."""
    events = []
    for index, document in enumerate(documents):
        try:
            events.append(event_from_json(document))
        except ValueError as error:  # InvalidEventError is a ValueError
            raise UsageError(f"{_where(arguments, index, batch=batch)}{error}") from None
    return events


def _where(arguments: argparse.Namespace, index: int, *, batch: bool) -> str:
    if arguments.file is None:
        return ""
    return f"--file {arguments.file} entry {index}: " if batch else f"--file {arguments.file}: "


async def _publish_amqp(
    arguments: argparse.Namespace, events: list[OutgoingEvent], out: TextIO
) -> int:
    try:
        addresses = split_broker_urls(arguments.amqp_url)
    except ValueError as error:
        raise UsageError(f"CONVEYOR_AMQP_URL: {error}") from None
    problem: Exception | None = None
    # Several nodes: the first that takes the connection (nothing is published before).
    for address in addresses:
        published = 0
        try:
            async with EventClient(address, namespace=arguments.namespace) as client:
                for event in events:
                    await client.publish(event)
                    published += 1
        except OSError as error:  # aiormq's connection errors are ConnectionErrors
            problem = error
            continue
        except PublishError as error:
            failed = f"{_where(arguments, published, batch=len(events) > 1)}{error}"
            complain(f"published {published} of {len(events)}, then not: {failed}")
            return EXIT_UNREACHABLE
        if arguments.json:
            print_json({"published": [event.id for event in events]}, out)
        else:
            out.write("".join(f"{event.id}\n" for event in events))
        return 0
    # aio-pika's errors name the host and port, never the URL with its password.
    complain(f"not published: {type(problem).__name__}: {problem}")
    return EXIT_UNREACHABLE


def _print_accepted(document: dict[str, Any], out: TextIO) -> None:
    out.write(f"{document['id']} {document['location']}\n")
