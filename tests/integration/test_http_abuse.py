"""Abusive HTTP clients against a real `conveyor serve`: slow loris, header floods, and memory.

The limits on the request head live in the process's AppRunner (service/cli/main.py), so these run
the real process and speak raw HTTP over sockets where a client library would not misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.processes import Process
from tests.support.recorder import Recorder

PROBLEM = "application/problem+json"
READ_TIMEOUT_SECONDS = 2
EVENT = orjson.dumps({"type": "slow.ok", "data": {"sleep": 0, "log": "/dev/null"}})

Launch = Callable[..., Awaitable[Process]]


async def _connect(process: Process) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(process.base.host, process.base.port)


async def _answer(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    return received


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _problem(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert f"content-type: {PROBLEM}".encode() in head.lower(), head
    document: dict[str, object] = orjson.loads(body)
    return document


async def _normal_clients(process: Process, stop: asyncio.Event) -> list[int]:
    """Post a valid event every 0.2 s until told to stop; the statuses they got."""
    statuses = []
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.post(
                process.base / "v1/events",
                data=EVENT,
                headers={"Content-Type": "application/json"},
            ) as response:
                statuses.append(response.status)
            await asyncio.sleep(0.2)
    return statuses


@pytest.fixture
async def serving(launch: Launch) -> Process:
    return await launch(CONVEYOR_HTTP_READ_TIMEOUT=f"{READ_TIMEOUT_SECONDS}s")


async def _slow_head(process: Process, sent: list[int]) -> bytes:
    """Send a request head one byte a second; return what the server said before closing."""
    reader, writer = await _connect(process)
    head = b"POST /v1/events HTTP/1.1\r\nHost: conveyor\r\nContent-Type: application/json\r\n"
    answer = b""  # a reset while sending is a close without a word too
    with contextlib.suppress(ConnectionError):
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            sent[0] += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    chunk = await reader.read(65536)
                    # b"": closed without a word; anything else is an answer to show.
                    answer = chunk + await _answer(reader, 5) if chunk else b""
                    break
        else:
            answer = b"the whole head went through"
    writer.close()
    return answer


async def test_a_slow_loris_head_is_cut_within_the_read_timeout_while_others_get_202(
    serving: Process,
) -> None:
    stop = asyncio.Event()
    normal = asyncio.create_task(_normal_clients(serving, stop))
    sent = [[0] for _ in range(5)]
    started = asyncio.get_running_loop().time()
    answers = await asyncio.gather(*(_slow_head(serving, count) for count in sent))
    elapsed = asyncio.get_running_loop().time() - started
    stop.set()
    statuses = await normal

    # aiohttp has no answer for a head that never completes: it closes the connection.
    assert answers == [b""] * 5
    # One byte a second: cut after about READ_TIMEOUT_SECONDS bytes, long before the head's 72.
    assert all(count[0] <= READ_TIMEOUT_SECONDS + 3 for count in sent), sent
    assert elapsed < 30
    assert statuses, "no normal request completed"
    assert set(statuses) == {202}, statuses


async def test_a_trickled_body_is_408_problem_json_while_others_get_202(serving: Process) -> None:
    stop = asyncio.Event()
    normal = asyncio.create_task(_normal_clients(serving, stop))
    reader, writer = await _connect(serving)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: conveyor\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    answer = b""
    trickled = 0
    with contextlib.suppress(ConnectionError):
        while not answer and trickled < 60:
            writer.write(b" ")
            await writer.drain()
            trickled += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    answer = await reader.read(65536)
        answer += await _answer(reader, 15)  # then the connection closes
    writer.close()
    stop.set()
    statuses = await normal

    assert _status(answer) == 408, answer
    problem = _problem(answer)
    assert problem["type"] == "urn:conveyor:problem:request-timeout"
    assert "CONVEYOR_HTTP_READ_TIMEOUT" in str(problem["detail"])
    assert trickled <= READ_TIMEOUT_SECONDS + 3
    assert set(statuses) == {202}, statuses


@pytest.mark.parametrize(
    ("name", "request_head", "status"),
    [
        (
            "101 headers",
            b"POST /v1/events HTTP/1.1\r\nHost: c\r\n"
            + b"".join(b"X-Flood-%d: 1\r\n" % index for index in range(101)),
            400,
        ),
        (
            "a header of 9000 bytes",
            b"POST /v1/events HTTP/1.1\r\nHost: c\r\nX-Big: " + b"a" * 9000 + b"\r\n",
            400,
        ),
        ("a URL of 10,000 bytes", b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: c\r\n", 400),
        (
            "a header value that is not UTF-8 and not latin-1 text",
            b"POST /v1/events HTTP/1.1\r\nHost: c\r\nce-id: \xff\xfe\x00\r\n",
            400,
        ),
    ],
)
async def test_header_floods_are_refused_by_aiohttp_with_a_4xx_and_the_process_stays_up(
    serving: Process, name: str, request_head: bytes, status: int
) -> None:
    reader, writer = await _connect(serving)
    writer.write(request_head + b"Content-Length: 2\r\n\r\n{}")
    answer = await _answer(reader, 10)
    writer.close()

    # aiohttp's parser answers these before any middleware runs: text/plain, not problem+json.
    assert _status(answer) == status, (name, answer[:200])
    assert b"content-type: text/plain" in answer.lower()
    assert await serving.get("/readyz") == 200
    assert await serving.post(orjson.loads(EVENT)) == 202


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_oversized_bodies_and_slow_loris_connections_keep_memory_bounded(
    launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    process = await launch(CONVEYOR_HTTP_READ_TIMEOUT="3s")
    limit = 1024 * 1024  # the default CONVEYOR_MAX_BODY_BYTES
    oversized = b'{"type": "big", "data": "' + b"x" * limit + b'"}'
    before = _rss_kib(process.popen.pid)

    async def chunked() -> object:
        for start in range(0, len(oversized), 65536):
            yield oversized[start : start + 65536]

    async def refuse_one(session: aiohttp.ClientSession, index: int) -> int:
        # Half declare their length (refused before reading), half are chunked (read up to the
        # limit, then refused).
        body: object = io.BytesIO(oversized) if index % 2 else chunked()
        try:
            async with session.post(
                process.base / "v1/events",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                return response.status
        except aiohttp.ClientError:
            return 413  # the server answered and closed while the client was still sending

    async def hold_slow_head() -> bytes:
        reader, writer = await _connect(process)
        writer.write(b"POST /v1/events HTTP/1.1\r\nHost: c\r\nX-Slow: ")
        answer = await _answer(reader, 20)
        writer.close()
        return answer

    slow = [asyncio.create_task(hold_slow_head()) for _ in range(200)]
    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = await asyncio.gather(*(refuse_one(session, index) for index in range(200)))
    peak = _rss_kib(process.popen.pid)
    assert await asyncio.gather(*slow) == [b""] * 200
    after = _rss_kib(process.popen.pid)

    assert set(statuses) == {413}, statuses
    assert await process.get("/readyz") == 200
    with capsys.disabled():
        print(f"\nRSS KiB: before {before}, with 200 slow heads open {peak}, after {after}")  # noqa: T201 - the figure the docs quote
    assert peak - before < 100 * 1024
    assert after - before < 100 * 1024


# --- bodies that parse badly: in-process, the parsing is the same -----------------------------

DEEP = b"[" * 100_000
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def _deep_data_event(depth: int) -> bytes:
    return (
        b'{"specversion": "1.0", "id": "deep", "source": "/s", "type": "deep.data", "data": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


@pytest.mark.parametrize(
    ("content_type", "body", "kind"),
    [
        (STRUCTURED, DEEP, "malformed-json"),
        (BATCH, DEEP, "malformed-json"),
        ("application/json", DEEP, "malformed-json"),
        ("application/json", b'{"type": "deep", "data": ' + DEEP + b"}", "malformed-json"),
        # Within orjson's 1024 levels to read, past its 254 to write: used to be a 500.
        (STRUCTURED, _deep_data_event(300), "invalid-event"),
        ("application/json", b'{"type": "deep", "data": ' + b"[" * 300 + b"]" * 300 + b"}", None),
    ],
)
async def test_deep_json_nesting_is_a_clear_400(
    start_conveyor: StartConveyor, content_type: str, body: bytes, kind: str | None
) -> None:
    conveyor = await start_conveyor((subscription("deep", ("#",), Recorder()),))
    response = await conveyor.client.post(
        "/v1/events", data=body, headers={"Content-Type": content_type}
    )
    assert response.status == 400, await response.text()
    assert response.content_type == PROBLEM
    problem = await response.json(content_type=PROBLEM)
    assert problem["type"] == f"urn:conveyor:problem:{kind or 'invalid-event'}"
    if kind != "malformed-json":
        assert problem["attribute"] == "data"
        assert "nested deeper than 254 levels" in problem["detail"]


async def test_a_deep_entry_in_a_batch_fails_alone(start_conveyor: StartConveyor) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("deep", ("#",), recorder),))
    fine = b'{"specversion": "1.0", "id": "fine", "source": "/s", "type": "deep.fine"}'
    response = await conveyor.client.post(
        "/v1/events",
        data=b"[" + _deep_data_event(300) + b", " + fine + b"]",
        headers={"Content-Type": BATCH},
    )
    assert response.status == 207, await response.text()
    deep, accepted = (await response.json())["results"]
    assert deep["error"]["attribute"] == "data"
    assert accepted["id"] == "fine"
    await recorder.wait_for(1)
    assert recorder.ids() == ["fine"]


@pytest.mark.parametrize(
    "case",
    [
        ({"Content-Type": STRUCTURED}, b'{"type": "\xff\xfe"}', "malformed-json", None),
        ({"Content-Type": BATCH}, b'[{"id": "\xc3\x28"}]', "malformed-json", None),
        (
            {"Content-Type": "application/json"},
            b'{"type": "a\xed\xa0\x80"}',
            "malformed-json",
            None,
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "%FF%FE", "ce-source": "/s", "ce-type": "t"},
            b"x",
            "invalid-event",
            "id",
        ),
    ],
)
async def test_invalid_utf8_is_a_clear_400(
    start_conveyor: StartConveyor,
    namespace: Namespace,
    case: tuple[dict[str, str], bytes, str, str | None],
) -> None:
    headers, body, kind, attribute = case
    conveyor = await start_conveyor((subscription("utf8", ("#",), Recorder()),))
    response = await conveyor.client.post("/v1/events", data=body, headers=headers)
    assert response.status == 400, await response.text()
    problem = await response.json(content_type=PROBLEM)
    assert problem["type"] == f"urn:conveyor:problem:{kind}"
    assert "UTF-8" in problem["detail"]
    if attribute:
        assert problem["attribute"] == attribute
    assert await namespace.depth(namespace.topology.queue("utf8")) == 0
