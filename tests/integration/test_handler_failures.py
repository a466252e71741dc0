"""A failing handler never loses its event: one more try from the queue, then the DLQ."""

from __future__ import annotations

import orjson

from tests.conftest import Namespace, StartConveyor, subscription
from tests.support.recorder import Recorder


async def test_a_handler_that_fails_once_gets_the_event_again_and_it_is_acked(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder(fail=lambda event: not event.redelivered)
    conveyor = await start_conveyor((subscription("flaky", ("flaky.*",), recorder),))

    response = await conveyor.post({"type": "flaky.op", "id": "f-1"})

    assert response.status == 202
    attempts = await recorder.wait_for(2)
    assert [(event.id, event.redelivered) for event in attempts] == [("f-1", False), ("f-1", True)]
    assert await namespace.depth(namespace.topology.dead_letter_queue("flaky")) == 0
    assert await namespace.depth(namespace.topology.queue("flaky")) == 0


async def test_a_handler_that_keeps_failing_sends_the_event_to_the_dlq_intact(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder(fail=lambda _event: True)
    ok = Recorder()
    conveyor = await start_conveyor(
        (
            subscription("broken", ("work.*",), recorder),
            subscription("healthy", ("work.*",), ok),
        )
    )

    response = await conveyor.post(
        {"type": "work.item", "id": "doomed", "subject": "s", "data": {"k": "v"}}
    )

    assert response.status == 202
    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("broken"), 1)
    assert dead.message_id == "doomed"
    assert orjson.loads(dead.body) == {"k": "v"}
    assert dead.headers is not None
    assert dead.headers["ce-subject"] == "s"
    assert dead.content_type == "application/json"
    assert len(recorder.events) == 2
    # The other subscription of the same event is unaffected by the failing one.
    assert ok.ids() == ["doomed"]
    assert await namespace.depth(namespace.topology.dead_letter_queue("healthy")) == 0
