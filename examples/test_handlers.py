"""Tests of the example handlers, with no broker: consumers.testing runs the subscriptions file
in memory, with the retries, dead letters and deduplication conveyor applies for real."""

from __future__ import annotations

from pathlib import Path

from consumers.testing import TestConveyor

SUBSCRIPTIONS = Path(__file__).with_name("subscriptions.toml")


async def test_a_signup_gets_its_welcome_email() -> None:
    async with TestConveyor(SUBSCRIPTIONS) as conveyor:
        result = await conveyor.send({"type": "user.signup", "data": {"email": "ada@example.com"}})
    assert result.outcomes == {"welcome-email": "succeeded", "audit-log": "succeeded"}
    assert len(result.attempts["welcome-email"]) == 1


async def test_an_order_without_a_total_is_dead_lettered_at_once() -> None:
    async with TestConveyor(SUBSCRIPTIONS) as conveyor:
        result = await conveyor.send({"type": "order.placed", "data": {"items": 2}})
    assert result.outcomes == {"orders": "dead-lettered", "audit-log": "succeeded"}
    assert result.dead_letters["orders"].reason == "permanent-error"
    assert len(result.attempts["orders"]) == 1  # a PermanentError is not retried


async def test_an_order_sent_twice_is_recorded_once(conveyor_harness: TestConveyor) -> None:
    # The conveyor_harness fixture runs pyproject's `conveyor_subscriptions`: this file's neighbour.
    order = {"type": "order.placed", "id": "o-1", "source": "/shop", "data": {"total": 12}}
    first = await conveyor_harness.send(order)
    again = await conveyor_harness.send(order)
    assert first.outcomes == again.outcomes == {"orders": "succeeded", "audit-log": "succeeded"}
    assert again.runs["orders"].skipped  # already succeeded: its handler did not run again
    assert not again.runs["audit-log"].skipped  # deduplicate = false: it logs every delivery
