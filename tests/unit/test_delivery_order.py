"""The consumer pipeline, pure logic: the delivery order chosen once, the stages it runs."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import cast

import pydantic

from consumers import Event, builtin
from consumers.delivery import Inbound
from consumers.delivery_order import DeliveryOrder, Ordered, Unordered, delivery_order
from consumers.observe import NO_DELIVERY_OBSERVER
from consumers.ordering import Ordering
from consumers.pipeline import checks
from consumers.reporting import StatusReporter
from consumers.settling import Outcome, Settler
from consumers.stages import SkipSucceeded, ValidatePayload
from consumers.subscription import Subscription
from tests.conftest import subscription


class Signup(pydantic.BaseModel):
    email: str


UNORDERED = subscription("plain", ("#",), builtin.discard)
ORDERED = dataclasses.replace(UNORDERED, ordering=Ordering("subject", partitions=2))
REPORTER = cast("StatusReporter", SimpleNamespace())  # held, not called, by what is built here
SETTLER = cast("Settler", SimpleNamespace())  # held, not called, by what is built here
LIVE = cast("Inbound", SimpleNamespace(channel=SimpleNamespace()))  # its channel still open


def order_of(sub: Subscription, stopping: asyncio.Event) -> DeliveryOrder:
    return delivery_order(
        sub,
        handler=builtin.discard,
        consumer_tags=["tag"],
        reporter=REPORTER,
        stopping=stopping,
    )


async def test_the_order_is_chosen_once_from_the_subscription() -> None:
    unordered = order_of(UNORDERED, asyncio.Event())
    ordered = order_of(ORDERED, asyncio.Event())
    assert isinstance(unordered, Unordered)
    assert unordered.cancel_at_drain
    assert unordered.uses_ladder
    assert isinstance(ordered, Ordered)
    assert not ordered.cancel_at_drain
    assert not ordered.uses_ladder


async def test_a_judging_failure_returns_unordered_and_holds_an_ordered_key_then_dead_letters() -> (
    None
):
    stopping = asyncio.Event()
    unordered = cast("Unordered", order_of(UNORDERED, stopping))
    ordered = cast("Ordered", order_of(ORDERED, stopping))
    assert unordered.after_failed_judging(LIVE, 1) is Outcome.RETURNED
    assert [ordered.after_failed_judging(LIVE, tries) for tries in (1, 2, 3)] == [
        None,
        None,
        Outcome.DEAD_LETTERED,
    ]
    assert ordered.settle_again(LIVE)
    assert not unordered.settle_again(LIVE)
    stopping.set()  # a shutdown: the ordered delivery goes back unsettled, in order
    assert ordered.after_failed_judging(LIVE, 1) is Outcome.RETURNED
    assert not ordered.settle_again(LIVE)


def test_deduplication_is_a_stage_only_where_the_subscription_deduplicates() -> None:
    [stage] = checks(UNORDERED, REPORTER, NO_DELIVERY_OBSERVER, SETTLER)
    assert isinstance(stage, SkipSucceeded)
    assert (
        checks(
            dataclasses.replace(UNORDERED, deduplicate=False),
            REPORTER,
            NO_DELIVERY_OBSERVER,
            SETTLER,
        )
        == ()
    )


async def _typed(event: Event[Signup]) -> None:
    del event


def test_a_typed_handler_gets_its_validation_stage_after_deduplication() -> None:
    typed = dataclasses.replace(UNORDERED, handler=_typed)
    assert typed.payload is not None
    skip, validate = checks(typed, REPORTER, NO_DELIVERY_OBSERVER, SETTLER)
    assert isinstance(skip, SkipSucceeded)
    assert isinstance(validate, ValidatePayload)
    assert UNORDERED.payload is None
