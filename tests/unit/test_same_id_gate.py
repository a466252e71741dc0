"""SameIdGate: publishes of one message id take turns, other ids do not wait."""

from __future__ import annotations

import asyncio

from producers.same_id import SameIdGate


async def test_same_ids_take_turns_and_different_ids_do_not_wait() -> None:
    gate = SameIdGate()
    order: list[str] = []

    async def hold(message_id: str, label: str) -> None:
        async with gate.turn(message_id):
            order.append(f"{label} in")
            await asyncio.sleep(0.05)
            order.append(f"{label} out")

    await asyncio.gather(hold("a", "a1"), hold("a", "a2"), hold("b", "b1"))
    assert order.index("a1 out") < order.index("a2 in")
    assert order.index("b1 in") < order.index("a1 out")
    assert gate._waiting == {}  # nothing left behind


async def test_a_held_id_makes_turns_wait_and_a_cancelled_waiter_passes_its_turn_on() -> None:
    gate = SameIdGate()
    assert gate.try_hold("a")
    assert not gate.try_hold("a")
    assert gate.try_hold("b")
    order: list[str] = []

    async def take(name: str) -> None:
        async with gate.turn("a"):
            order.append(name)

    first = asyncio.create_task(take("first"))
    cancelled = asyncio.create_task(take("cancelled"))
    last = asyncio.create_task(take("last"))
    await asyncio.sleep(0)
    assert order == []  # "a" is held
    cancelled.cancel()
    gate.release("a")
    await asyncio.gather(first, last, cancelled, return_exceptions=True)
    assert order == ["first", "last"]
    assert gate.try_hold("a")  # free again once every turn ended
    gate.release("a")
    gate.release("b")
