"""The admission's byte budget: what fits is held until the request ends, what does not waits its
turn briefly, then is refused."""

from __future__ import annotations

import asyncio

import pytest

from service.http.admission import Admission, OverloadedError, events_bound


async def test_bytes_are_held_until_the_request_ends_and_the_gauge_follows() -> None:
    seen: list[int] = []
    admission = Admission(4, 100, on_bytes=seen.append, wait=0.05)
    with admission.admit() as ticket:
        await ticket.reserve(60)
        await ticket.reserve(30)
        assert admission.bytes_in_flight == 90
    assert admission.bytes_in_flight == 0
    assert seen == [60, 90, 0]


async def test_a_reservation_that_does_not_fit_is_refused_after_the_wait() -> None:
    admission = Admission(4, 100, wait=0.05)
    with admission.admit() as first:
        await first.reserve(80)
        with admission.admit() as second, pytest.raises(OverloadedError) as refused:
            await second.reserve(30)
        assert "CONVEYOR_MAX_INGEST_BYTES" in str(refused.value)
        assert refused.value.limit == 100
        assert admission.bytes_in_flight == 80  # the refused request took nothing
    assert admission.bytes_in_flight == 0


async def test_a_waiting_reservation_gets_in_when_bytes_are_released_first_come_first_served() -> (
    None
):
    admission = Admission(4, 100, wait=5.0)
    order: list[str] = []
    first = admission.admit()
    first.__enter__()
    await first.reserve(90)

    async def wants(name: str, amount: int) -> None:
        with admission.admit() as ticket:
            await ticket.reserve(amount)
            order.append(name)
            await asyncio.sleep(0)

    large = asyncio.create_task(wants("large", 80))
    await asyncio.sleep(0)
    small = asyncio.create_task(wants("small", 5))  # would fit now, but waits behind `large`
    await asyncio.sleep(0)
    assert order == []
    first.__exit__(None, None, None)
    await asyncio.gather(large, small)
    assert order == ["large", "small"]
    assert admission.bytes_in_flight == 0


def test_requests_past_the_count_are_refused_before_any_byte() -> None:
    admission = Admission(1, 100)
    with admission.admit(), pytest.raises(OverloadedError) as refused, admission.admit():
        pass
    assert "CONVEYOR_MAX_CONCURRENT_REQUESTS" in str(refused.value)


def test_a_batch_is_charged_for_as_many_events_as_it_has_objects_at_most() -> None:
    batch = b'[{"id":"a","data":{"x":1}},{"id":"b"}]'
    assert events_bound("application/cloudevents-batch+json", batch, 1000) == 3
    assert events_bound("application/cloudevents-batch+json", batch, 1) == 2
    assert events_bound("application/cloudevents+json", batch, 1000) == 1
    assert events_bound("application/cloudevents-batch+json", b"[]", 1000) == 1


async def test_a_request_holding_bytes_goes_before_newcomers_waiting_for_them() -> None:
    admission = Admission(4, 100, wait=5.0)
    order: list[str] = []
    holder = admission.admit()
    holder.__enter__()
    await holder.reserve(60)  # its body, say
    other = admission.admit()
    other.__enter__()
    await other.reserve(30)

    async def newcomer() -> None:
        with admission.admit() as ticket:
            await ticket.reserve(50)
            order.append("newcomer")

    waiting = asyncio.create_task(newcomer())
    await asyncio.sleep(0)
    # The holder's next reservation (its events) waits for `other`, ahead of the newcomer,
    # which could only get in once the holder is done.
    events = asyncio.create_task(holder.reserve(20))
    await asyncio.sleep(0)
    assert not events.done()
    other.__exit__(None, None, None)
    await events
    order.append("holder")
    holder.__exit__(None, None, None)
    await waiting
    assert order == ["holder", "newcomer"]
    assert admission.bytes_in_flight == 0
