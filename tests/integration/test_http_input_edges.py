"""Inputs at the edges of the API document: attribute types, encodings, paging, waits, methods."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest

from service.http.openapi_route import load_document
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder

API_KEY = "findings-ingest-key"
ADMIN_TOKEN = "findings-admin-token-0123"
INGEST = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM = "application/problem+json"


@pytest.fixture
async def conveyor(start_conveyor: StartConveyor) -> Running:
    return await start_conveyor(
        (subscription("all", ("#",), Recorder()),),
        api_keys=frozenset({API_KEY}),
        admin_tokens=(("ops", ADMIN_TOKEN),),
        archive=3600.0,  # its routes exist only with it, and every route is checked here
    )


async def raw_request(conveyor: Running, head: bytes, body: bytes = b"") -> tuple[int, str, Any]:
    """Send bytes no HTTP client would (header values that are not UTF-8): status, type, body."""
    port = conveyor.client.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = f"Content-Length: {len(body)}\r\n".encode()
    writer.write(head + b"\r\nHost: test\r\nConnection: close\r\n" + length + b"\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    header_block, _, payload = answer.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    content_type = next(
        (
            line.split(":", 1)[1].strip()
            for line in lines
            if line.lower().startswith("content-type")
        ),
        "",
    )
    return int(lines[0].split()[1]), content_type, orjson.loads(payload)


async def assert_nothing_published(namespace: Namespace) -> None:
    assert await namespace.depth(namespace.topology.queue("all")) == 0
    assert await namespace.depth(namespace.topology.unrouted) == 0


async def test_a_batch_in_which_every_entry_failed_is_a_problem_with_each_entrys_problem(
    conveyor: Running, namespace: Namespace
) -> None:
    # Was application/json {"results": ...} with status 400: an error that was no problem body.
    response = await conveyor.client.post(
        "/v1/events",
        json=[{"id": "1"}, {"id": "2"}],
        headers={"Content-Type": "application/cloudevents-batch+json", **INGEST},
    )

    assert response.status == 400
    assert response.content_type == PROBLEM
    body = await response.json(content_type=PROBLEM)
    assert body["type"] == "urn:conveyor:problem:batch-rejected"
    assert body["status"] == 400
    assert [entry["error"]["attribute"] for entry in body["results"]] == ["source", "source"]
    await assert_nothing_published(namespace)


@pytest.mark.parametrize("attribute", ["id", "source", "type", "subject"])
async def test_spec_attributes_must_be_json_strings(
    conveyor: Running, namespace: Namespace, attribute: str
) -> None:
    # Was accepted: `"id": false` became the id "false".
    event = {"specversion": "1.0", "id": "s-1", "source": "/s", "type": "t", attribute: False}
    response = await conveyor.client.post(
        "/v1/events",
        json=event,
        headers={"Content-Type": "application/cloudevents+json", **INGEST},
    )

    assert response.status == 400
    body = await response.json(content_type=PROBLEM)
    assert (body["type"], body["attribute"]) == ("urn:conveyor:problem:invalid-event", attribute)
    await assert_nothing_published(namespace)


async def test_extension_attributes_may_still_be_booleans_and_integers(conveyor: Running) -> None:
    event = {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "t", "flag": True, "n": 7}
    response = await conveyor.client.post(
        "/v1/events",
        json=event,
        headers={"Content-Type": "application/cloudevents+json", **INGEST},
    )

    assert response.status == 202
    answer = await conveyor.client.get("/v1/events/e-1", headers=INGEST)
    attributes = (await answer.json())["attributes"]
    assert (attributes["flag"], attributes["n"]) == ("true", "7")


BINARY = b"ce-specversion: 1.0\r\nce-source: /s\r\nce-type: t\r\n"
INGEST_RAW = f"Authorization: Bearer {API_KEY}\r\n".encode()


@pytest.mark.parametrize(
    ("headers", "attribute"),
    [
        # Was 500: the request fingerprint encoded the header, which held lone surrogates.
        (b"Content-Type: text/plain\r\nce-id: \xff\xfe\r\nIdempotency-Key: k-1\r\n", "id"),
        (b"Content-Type: text/\xffplain\r\nce-id: 1\r\n", "datacontenttype"),
        # Was 500 as well: the 415 problem's detail held the surrogate, which orjson refuses.
        (b"Content-Type: text/\xff\r\n", "datacontenttype"),
    ],
)
async def test_header_bytes_that_are_not_utf8_are_an_invalid_event(
    conveyor: Running, namespace: Namespace, headers: bytes, attribute: str
) -> None:
    binary = BINARY if b"ce-id" in headers else b""
    status, content_type, body = await raw_request(
        conveyor, b"POST /v1/events HTTP/1.1\r\n" + INGEST_RAW + binary + headers.rstrip(), b"hi"
    )

    assert (status, content_type) == (400, PROBLEM)
    assert (body["type"], body["attribute"]) == ("urn:conveyor:problem:invalid-event", attribute)
    await assert_nothing_published(namespace)


async def test_a_percent_encoded_header_must_decode_to_utf8(
    conveyor: Running, namespace: Namespace
) -> None:
    # Was accepted with the id U+FFFD U+FFFD U+FFFD: not the id that was sent.
    response = await conveyor.client.post(
        "/v1/events",
        data=b"hi",
        headers={
            "Content-Type": "text/plain",
            "ce-specversion": "1.0",
            "ce-id": "%ED%A0%80",
            "ce-source": "/s",
            "ce-type": "t",
            **INGEST,
        },
    )

    assert response.status == 400
    body = await response.json(content_type=PROBLEM)
    assert body["attribute"] == "id"
    await assert_nothing_published(namespace)


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"GET /v1/events/x HTTP/1.1", 401), (b"GET /v1/admin/subscriptions HTTP/1.1", 403)],
)
async def test_a_bearer_that_is_not_utf8_is_refused_not_a_server_error(
    conveyor: Running, request_line: bytes, status: int
) -> None:
    # Was 500: the constant-time comparison encoded the presented token.
    answered, content_type, body = await raw_request(
        conveyor, request_line + b"\r\nAuthorization: Bearer \xff\xfe"
    )

    assert (answered, content_type, body["status"]) == (status, PROBLEM, status)


async def test_dead_letter_paging_takes_ascii_digits_only(conveyor: Running) -> None:
    # Was 500: '²'.isdigit() is true, int('²') raises.
    response = await conveyor.client.get(
        "/v1/admin/subscriptions/all/dead-letters", params={"offset": "²"}, headers=ADMIN
    )

    assert response.status == 400
    body = await response.json(content_type=PROBLEM)
    assert "offset" in body["detail"]


@pytest.mark.parametrize(
    "document",
    [
        {"all": True, "rate": True},  # was a rate of 1 message per second
        {"ids": [None]},  # was the entry id "None"
        {"ids": [1, 2]},
    ],
)
async def test_replay_refuses_a_boolean_rate_and_ids_that_are_not_strings(
    conveyor: Running, document: dict[str, Any]
) -> None:
    response = await conveyor.client.post(
        "/v1/admin/subscriptions/all/dead-letters/replay", json=document, headers=ADMIN
    )

    assert response.status == 400
    body = await response.json(content_type=PROBLEM)
    assert body["type"] == "urn:conveyor:problem:invalid-admin-request"


def _documented(path: str, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = load_document()["paths"][path][method]
    return operation


WAITS = [
    *("0", "2.5", "07s", "60", "60s", "60.000s", "500ms", "59999.5ms", "60000ms"),
    # The document allowed these up to 99 s, which the server refused.
    *("60.001s", "61s", "79.561s", "99s", "99.999s", "60001ms", "99999ms"),
    # The server took these, which the document did not allow.
    *("1m", "0.5m", "0.01h", " 5s", "5s ", "5 s"),
    *("1h", "-1s", "soon", "", "10S", "٣s", ".5s"),
]


async def test_the_server_takes_exactly_the_waits_the_document_allows(conveyor: Running) -> None:
    parameters = _documented("/v1/events/{event_id}", "get")["parameters"]
    (wait,) = [parameter for parameter in parameters if parameter["name"] == "wait"]
    documented = re.compile(wait["schema"]["pattern"])
    # A finished event: any wait the server takes is answered at once.
    posted = await conveyor.client.post(
        "/v1/events", json={"type": "w.x", "id": "w-1"}, headers=INGEST
    )
    assert posted.status == 202
    done = await conveyor.client.get("/v1/events/w-1", params={"wait": "10s"}, headers=INGEST)
    assert (await done.json())["done"]

    answered = {}
    for text in WAITS:
        query = {"wait": text}
        response = await conveyor.client.get("/v1/events/w-1", params=query, headers=INGEST)
        answered[text] = response.status

    expected = {text: 200 if documented.fullmatch(text) else 400 for text in WAITS}
    assert answered == expected


async def test_only_the_documented_methods_are_allowed_on_each_path(conveyor: Running) -> None:
    concrete = {
        "{name}": "all",
        "{entry_id}": "e-1",
        "{event_id}": "x",
        "{asset}": "api_docs.js",
        "{replay_id}": "r-1",
        "{offset}": "1",
    }
    allowed = {}
    documented = {}
    for template, item in load_document()["paths"].items():
        path = template
        for name, value in concrete.items():
            path = path.replace(name, value)
        response = await conveyor.client.request("PUT", path)
        assert response.status == 405, (template, response.status)
        allowed[template] = set(response.headers["Allow"].split(","))
        methods = {method.upper() for method in item}
        documented[template] = methods | ({"HEAD"} if "GET" in methods else set())

    # Was GET,HEAD,POST on .../replay and .../discard: .../{entry_id} matched them too.
    assert allowed == documented
