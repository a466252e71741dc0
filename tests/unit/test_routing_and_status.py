"""Pure logic behind statuses: topic matching and an event's overall state."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from consumers.status import DeliveryUpdate
from service.broker.routing import topic_matches
from service.http.status_book import EventStatus


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("order.placed", "order.placed", True),
        ("order.placed", "order.placed.eu", False),
        ("order.*", "order.placed", True),
        ("order.*", "order", False),
        ("order.*", "order.placed.eu", False),
        ("order.#", "order", True),
        ("order.#", "order.placed.eu", True),
        ("#", "", True),
        ("#", "anything.at.all", True),
        ("*", "", True),  # an empty key is one empty word
        ("*.eu.#", "x.eu", True),
        ("*.eu.#", "eu", False),
        ("#.eu", "a.b.eu", True),
        ("#.eu.#", "eu", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y.c", False),
    ],
)
def test_topic_matching_follows_amqp(pattern: str, key: str, expected: object) -> None:
    assert topic_matches(pattern, key) is expected


def status(*states: str, unrouted: bool = False) -> EventStatus:
    subscriptions = {f"s{index}": {"state": state} for index, state in enumerate(states)}
    return EventStatus({}, None, subscriptions, unrouted=unrouted)


@pytest.mark.parametrize(
    ("event", "state", "done"),
    [
        (status(unrouted=True), "unrouted", True),
        (status(), "pending", False),  # routed, but no subscription has reported yet
        (status("pending"), "pending", False),
        (status("retrying"), "retrying", False),
        (status("succeeded", "succeeded"), "succeeded", True),
        (status("succeeded", "dead-lettered"), "dead-lettered", True),
        (status("succeeded", "processing"), "in-progress", False),
    ],
)
def test_an_events_overall_state(event: EventStatus, state: str, done: object) -> None:
    assert (event.state, event.done) == (state, done)


def test_first_attempt_started_carries_every_other_field() -> None:
    # Built field by field for speed: a field added to DeliveryUpdate must be carried too.
    # Every field gets a value of its own, so a dropped or swapped one shows.
    values: dict[str, Any] = {
        field.name: f"value of {field.name}" for field in dataclasses.fields(DeliveryUpdate)
    }
    update = DeliveryUpdate(**values)
    assert update.first_attempt_started(12.5) == dataclasses.replace(update, first_attempt_at=12.5)
