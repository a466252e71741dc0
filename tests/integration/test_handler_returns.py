"""A handler that returns a value: conveyor ignores it, and says so once per subscription."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from consumers import Event
from tests.conftest import StartConveyor, subscription
from tests.support.waiting import eventually

RETURN_WARNING = (
    "handler returned a value, which conveyor ignores: return None to acknowledge, raise to "
    "fail (logged once per subscription)"
)


async def test_a_handler_returning_a_value_is_warned_about_once_per_subscription(
    start_conveyor: StartConveyor,
) -> None:
    handled: dict[str, list[str]] = {"a": [], "b": []}
    sentinels = {"a": asyncio.Event(), "b": asyncio.Event()}

    def returning(name: str) -> object:
        async def handle(event: Event) -> object:
            handled[name].append(event.id)
            if event.type.endswith(".sentinel"):
                sentinels[name].set()
            return {"status": "done"}  # meant as an answer; conveyor only acks

        return handle

    conveyor = await start_conveyor(
        (
            subscription("a", ("ret.a", "ret.a.sentinel"), returning("a")),  # type: ignore[arg-type]  # the mistake under test: a handler typed to return a value
            subscription("b", ("ret.b", "ret.b.sentinel"), returning("b")),  # type: ignore[arg-type]  # the mistake under test, likewise
        )
    )
    with capture_logs() as logs:
        for name in ("a", "b"):
            for number in range(6):
                posted = {"type": f"ret.{name}", "id": f"{name}-{number}", "source": "/t"}
                assert await conveyor.post_status(posted) == 202
        # The last of each subscription: once every event is handled, no warning is pending.
        for name in ("a", "b"):
            sentinel = {"type": f"ret.{name}.sentinel", "id": f"{name}-end", "source": "/t"}
            assert await conveyor.post_status(sentinel) == 202
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in sentinels.values())), 10)

        async def all_handled() -> bool:
            return all(len(ids) == 7 for ids in handled.values())

        await eventually(all_handled, what="every event handled")
    warnings = [line for line in logs if line["event"] == RETURN_WARNING]
    assert sorted(line["subscription"] for line in warnings) == ["a", "b"]
    assert {line["handler"] for line in warnings} == {"tests:a", "tests:b"}
    assert {line["returned_type"] for line in warnings} == {"dict"}
