"""A RabbitMQ memory alarm blocks publishers: conveyor says so, answers 503, and loses nothing.

Changes the local broker's memory watermark for a few seconds, so it runs only in `make chaos`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from service import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

RABBITMQCTL = shutil.which("rabbitmqctl")
HEARTBEAT = 2.0


def rabbitmqctl(*arguments: str) -> str:
    if RABBITMQCTL is None:
        pytest.fail("the chaos suite needs rabbitmqctl for the local broker", pytrace=False)
    result = subprocess.run(  # noqa: S603 - a fixed local admin tool
        [RABBITMQCTL, *arguments], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout


@pytest.fixture
def memory_alarm() -> Iterator[None]:
    """A memory watermark so low that RabbitMQ raises its alarm; restored however the test ends."""
    rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    try:
        yield
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")


async def blocked(conveyor: Running) -> float:
    text = await (await conveyor.client.get("/metrics")).text()
    line = next(line for line in text.splitlines() if line.startswith("conveyor_broker_blocked "))
    return float(line.split()[1])


async def test_an_alarm_blocks_publishing_with_503s_and_nothing_accepted_is_lost(
    start_conveyor: StartConveyor, namespace: Namespace, memory_alarm: None
) -> None:
    conveyor = await start_conveyor(
        (subscription("alarm", ("alarm.*",), Recorder()),),
        publish_timeout=1.0,
        role=Role.INGRESS,
        amqp_heartbeat=HEARTBEAT,
    )
    # RabbitMQ raises the alarm on its next memory check and blocks a connection when it
    # publishes: post until the answers turn into 503s.
    answers: dict[str, int] = {}
    for index in range(20):
        event_id = f"a-{index}"
        response = await conveyor.post({"type": "alarm.test", "id": event_id, "source": "/x"})
        answers[event_id] = response.status
        if response.status == 503 and await blocked(conveyor) == 1:
            break
    assert set(answers.values()) <= {202, 503}
    assert list(answers.values())[-1] == 503  # never a 202 RabbitMQ did not confirm
    assert await blocked(conveyor) == 1
    # A blocked link is not a silent one: RabbitMQ keeps sending heartbeats, so the link
    # watchdog leaves it alone (a new connection would read as not blocked).
    await asyncio.sleep(3 * HEARTBEAT)
    assert await blocked(conveyor) == 1
    rabbitmqctl("set_vm_memory_high_watermark", "0.4")

    async def unblocked() -> bool:
        return await blocked(conveyor) == 0

    await eventually(unblocked, timeout=30, what="the alarm to clear")
    after = await conveyor.post({"type": "alarm.test", "id": "a-after", "source": "/x"})
    assert after.status == 202

    # Every event answered 202 is in the queue (the 503 ones may be too: a blocked publish
    # goes out once the alarm clears, which is why a 503 means "retry", not "lost").
    accepted = {event_id for event_id, status in answers.items() if status == 202} | {"a-after"}
    queued = await namespace.take_at_least(namespace.topology.queue("alarm"), len(accepted))
    assert accepted <= {message.message_id for message in queued}
