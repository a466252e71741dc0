"""Messages whose own headers nearly fill one AMQP frame, published over AMQP by another
publisher: no copy of them with conveyor's headers fits a frame.

A failure dead-letters such an event once, through the queue's own dead-lettering, and the
dead-letter passes (list, replay, discard) skip such an entry, keep it, and handle the others.
"""

from __future__ import annotations

import io
from typing import Any

import aio_pika
import orjson
import pytest
from pamqp.commands import Basic

from consumers import Event, PermanentError
from consumers.retry import RetryPolicy
from producers.frames import WireMessage
from producers.pipeline import ChannelPipeline
from service.cli.client import run_client
from service.cli.main import build_parser
from tests.conftest import Running, StartConveyor, subscription
from tests.support.frames import PADDING_HEADER, frame_filling, negotiated_frame_max
from tests.support.namespace import Namespace
from tests.support.recorder import Gate, Recorder

TOKEN = "ops-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BASE = "/v1/admin/subscriptions/orders/dead-letters"


def ce_headers(event_id: str, event_type: str) -> dict[str, Any]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/big",
        "ce-type": event_type,
    }


async def publish_filling(
    namespace: Namespace, event_id: str, event_type: str, *, exchange: str | None = None
) -> int:
    """Publish, with confirm, an event whose headers nearly fill the broker's frame_max to the
    events exchange (or straight into the queue named `exchange`); the padding's length."""
    frame_max = await negotiated_frame_max(namespace.amqp_url)
    message = frame_filling(
        frame_max,
        b'{"big": true}',
        ce_headers(event_id, event_type),
        message_id=event_id,
        content_type="application/json",
    )
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        if exchange is None:
            events = await channel.get_exchange(namespace.topology.events_exchange)
            await events.publish(message, routing_key=event_type)
        else:
            await channel.default_exchange.publish(message, routing_key=exchange)
    padding = (message.headers or {})[PADDING_HEADER]
    assert isinstance(padding, str)
    return len(padding)


async def test_a_permanent_failure_of_an_uncopyable_event_runs_once_and_dead_letters_it(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    ran: list[str] = []

    async def refuse(event: Event) -> None:
        ran.append(event.id)
        if event.id == "big-1":
            raise PermanentError("no such order")

    conveyor = await start_conveyor(
        (subscription("big", ("big.*",), refuse, prefetch=1, concurrency=1),)
    )
    padding = await publish_filling(namespace, "big-1", "big.x")
    # Published after it, and handled one at a time: a redelivery of big-1 would come first.
    await namespace.publish_raw(b"{}", routing_key="big.x", headers=ce_headers("after", "big.x"))

    _, status = await conveyor.status("/v1/events/after", wait="10s")
    assert status.get("state") == "succeeded"
    assert ran == ["big-1", "after"]  # the handler ran once for it
    _, dead = await conveyor.status("/v1/events/big-1", wait="10s")
    big = dead["subscriptions"]["big"]
    assert (big["state"], big["attempts"]) == ("dead-lettered", 1)
    assert big["last_error"] == {
        "class": "PermanentError",
        "message": "no such order",
        "reason": "unmovable",
    }
    [entry] = await namespace.take_at_least(namespace.topology.dead_letter_queue("big"), 1)
    headers: dict[str, Any] = dict(entry.headers or {})
    assert entry.message_id == "big-1"
    assert len(headers[PADDING_HEADER]) == padding  # the message as it was published
    assert headers["x-first-death-reason"] == "rejected"  # the queue's own dead-lettering
    assert await namespace.depth(namespace.topology.queue("big")) == 0


async def test_a_retryable_failure_of_an_uncopyable_event_does_not_loop(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder(fail=lambda event: event.id == "big-2")
    retry = RetryPolicy(in_process=2, delays=(0.2,))
    conveyor = await start_conveyor(
        (subscription("big", ("big.*",), recorder, prefetch=1, concurrency=1, retry=retry),)
    )
    await publish_filling(namespace, "big-2", "big.x")
    await namespace.publish_raw(b"{}", routing_key="big.x", headers=ce_headers("after", "big.x"))

    _, status = await conveyor.status("/v1/events/after", wait="10s")
    assert status.get("state") == "succeeded"
    # Its two attempts in process, and no more: the retry tier could not take a copy.
    assert recorder.ids() == ["big-2", "big-2", "after"]
    _, dead = await conveyor.status("/v1/events/big-2", wait="10s")
    big = dead["subscriptions"]["big"]
    assert (big["state"], big["attempts"]) == ("dead-lettered", 2)
    assert big["last_error"]["reason"] == "unmovable"
    [entry] = await namespace.take_at_least(namespace.topology.dead_letter_queue("big"), 1)
    assert entry.message_id == "big-2"
    assert await namespace.depth(namespace.topology.retry_queue("big", "200ms")) == 0


async def test_a_retry_tier_that_returns_the_copy_dead_letters_the_event_once(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder(fail=lambda event: event.id == "t-1")
    retry = RetryPolicy(in_process=1, delays=(0.2,))
    conveyor = await start_conveyor(
        (subscription("tiered", ("tier.*",), recorder, prefetch=1, concurrency=1, retry=retry),)
    )
    # Deleted from outside: RabbitMQ returns the copy, as it would every time.
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(namespace.topology.retry_queue("tiered", "200ms"))
    for event_id in ("t-1", "t-2"):
        document = {"type": "tier.x", "id": event_id, "source": "/tiers"}
        assert (await conveyor.post(document)).status == 202

    _, after = await conveyor.status("/v1/events/t-2", wait="10s")
    assert after.get("state") == "succeeded"
    assert recorder.ids() == ["t-1", "t-2"]  # t-1 was not handed back and handled again
    _, dead = await conveyor.status("/v1/events/t-1", wait="10s")
    tiered = dead["subscriptions"]["tiered"]
    assert (tiered["state"], tiered["last_error"]["reason"]) == ("dead-lettered", "unmovable")
    [entry] = await namespace.take_at_least(namespace.topology.dead_letter_queue("tiered"), 1)
    assert entry.message_id == "t-1"


async def test_a_header_frame_past_frame_max_is_refused_before_it_is_sent(
    amqp_url: str, queue_name: str
) -> None:
    frame_max = await negotiated_frame_max(amqp_url)
    async with await aio_pika.connect(amqp_url) as connection:
        pipeline = await ChannelPipeline(
            await connection.channel(publisher_confirms=True)
        ).current()
        too_large = WireMessage(b"x", headers={PADDING_HEADER: "j" * frame_max})
        with pytest.raises(ValueError, match="more than one frame"):
            _ = pipeline.publish(too_large, exchange="", routing_key=queue_name, mandatory=True)
        # RabbitMQ would have closed the whole connection for it: this one still works.
        confirmation = await pipeline.publish(
            WireMessage(b"y", message_id="after"),
            exchange="",
            routing_key=queue_name,
            mandatory=True,
        )
        pipeline.close()
    assert isinstance(confirmation, Basic.Ack)


async def call(conveyor: Running, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await conveyor.client.request(method, path, json=body, headers=ADMIN)
    return response.status, await response.json(content_type=None)


async def dead_letter_around_an_uncopyable_one(
    start_conveyor: StartConveyor, namespace: Namespace, gate: Gate
) -> Running:
    """`orders` with a-1 and a-2 in its DLQ, and between them `big`, which no copy fits."""
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), gate),), admin_tokens=(("ops", TOKEN),)
    )
    for event_id in ("a-1", "big", "a-2"):
        if event_id == "big":
            # Straight into the DLQ: as the queue's own dead-lettering puts such an event there.
            dlq = namespace.topology.dead_letter_queue("orders")
            await publish_filling(namespace, "big", "order.big", exchange=dlq)
            continue
        document = {"type": "order.placed", "id": event_id, "source": "/shop"}
        assert (await conveyor.post(document)).status == 202
        _, status = await conveyor.status(f"/v1/events/{event_id}", wait="10s")
        assert status["state"] == "dead-lettered"
    return conveyor


async def left_in_dlq(namespace: Namespace) -> list[str]:
    queue = namespace.topology.dead_letter_queue("orders")
    return sorted(m.message_id or "" for m in await namespace.take_all(queue))


async def test_dead_letter_passes_skip_an_entry_no_copy_fits_and_handle_the_others(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    gate = Gate()
    conveyor = await dead_letter_around_an_uncopyable_one(start_conveyor, namespace, gate)

    listed_status, listed = await call(conveyor, "GET", BASE)
    again_status, again = await call(conveyor, "GET", BASE)
    gate.open = True
    replay_status, replayed = await call(conveyor, "POST", f"{BASE}/replay", {"all": True})

    assert (listed_status, again_status, replay_status) == (200, 200, 200)
    assert [e["event"]["id"] for e in listed["entries"]] == ["a-1", "big", "a-2"]
    assert {e["event"]["id"] for e in again["entries"]} == {"a-1", "big", "a-2"}
    [skipped] = listed["skipped_entries"]
    assert listed["skipped"] == 1
    assert skipped["event"]["id"] == "big"
    assert "cannot be copied" in skipped["why"]
    assert (replayed["replayed"], replayed["kept"], replayed["skipped"]) == (2, 1, 1)
    assert replayed["skipped_entries"][0]["event"]["id"] == "big"
    handled = await gate.handled.wait_for(2)
    assert sorted(event.id for event in handled) == ["a-1", "a-2"]
    assert await left_in_dlq(namespace) == ["big"]  # skipped, never lost


async def test_a_discard_skips_an_entry_no_copy_fits_and_can_still_discard_it(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await dead_letter_around_an_uncopyable_one(start_conveyor, namespace, Gate())
    _, listed = await call(conveyor, "GET", BASE)
    ids = {entry["event"]["id"]: entry["id"] for entry in listed["entries"]}

    status, discarded = await call(conveyor, "POST", f"{BASE}/discard", {"ids": [ids["a-1"]]})

    assert status == 200
    assert (discarded["discarded"], discarded["kept"], discarded["skipped"]) == (1, 2, 1)
    assert await left_in_dlq(namespace) == ["a-2", "big"]
    # Taken and put back by the test; a discard needs no copy of it.
    await publish_filling(
        namespace, "big", "order.big", exchange=namespace.topology.dead_letter_queue("orders")
    )
    _, relisted = await call(conveyor, "GET", BASE)
    [big_id] = [e["id"] for e in relisted["entries"] if e["event"]["id"] == "big"]
    status, discarded = await call(conveyor, "POST", f"{BASE}/discard", {"ids": [big_id]})
    assert status == 200
    assert (discarded["discarded"], discarded["skipped"]) == (1, 0)
    assert await left_in_dlq(namespace) == []


async def conveyor_cli(conveyor: Running, *argv: str) -> tuple[int, str]:
    environ = {"CONVEYOR_URL": str(conveyor.client.make_url("/"))}
    arguments = build_parser(environ).parse_args([*argv, "--token", TOKEN])
    out = io.StringIO()
    code = await run_client(arguments, out)
    return code, out.getvalue()


async def test_dlq_commands_report_the_skipped_entry_and_handle_the_others(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    gate = Gate()
    conveyor = await dead_letter_around_an_uncopyable_one(start_conveyor, namespace, gate)

    listed_code, listed = await conveyor_cli(conveyor, "dlq", "ls", "orders")
    gate.open = True
    replay_code, replayed = await conveyor_cli(
        conveyor, "dlq", "replay", "orders", "--type", "order.placed", "--json"
    )
    discard_code, discarded = await conveyor_cli(
        conveyor, "dlq", "discard", "orders", "--all", "--json"
    )

    assert (listed_code, replay_code, discard_code) == (0, 0, 0)
    lines = listed.splitlines()
    assert lines[0].endswith(": showing 3 of 3 entries")
    assert lines[5] == "skipped 1 (still in the queue):"
    assert lines[6].split()[1] == "big"
    assert (orjson.loads(replayed)["replayed"], orjson.loads(replayed)["skipped"]) == (2, 1)
    assert orjson.loads(discarded)["discarded"] == 1  # a discard needs no copy: big is gone
    assert sorted(event.id for event in await gate.handled.wait_for(2)) == ["a-1", "a-2"]
    assert await left_in_dlq(namespace) == []
