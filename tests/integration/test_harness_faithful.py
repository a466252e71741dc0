"""The harness decides as the service does: one scenario set, run through `TestConveyor` and
through conveyor on RabbitMQ, must come to the same outcomes, attempts and dead-letter reasons.

Each scenario is a subscriptions file (one subscription, `faithful`, whose handler is one of
tests/support/harness_handlers.py) and steps of events: each step is sent together, in order,
and waited for. On the real side every event is POSTed, except a repeat of an id, which is
published straight to the events exchange (the ingress would not publish it again: the
consumer's deduplication is what the scenario checks), and a step is over when a completion
event has come for each of its events.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractQueue

from consumers.testing import TestConveyor
from consumers.testing.events import event_to_publish
from producers.wire import to_wire_message
from service.subscription_config import load_subscriptions
from tests.conftest import Running, StartConveyor
from tests.support import harness_handlers
from tests.support.namespace import Namespace
from tests.support.waiting import eventually

SUBSCRIPTION = "faithful"
Step = tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Scenario:
    handler: str  # "module:function" under tests.support
    steps: tuple[Step, ...]
    # One per event sent, in order: (final state, handler calls, dead-letter reason).
    expected: tuple[tuple[str, int, str | None], ...]
    in_process: int = 1
    delays: tuple[str, ...] = ()
    timeout: str = "5s"
    ordered: bool = False
    # The handler calls in order, by event id, where the order is part of the scenario.
    expected_calls: tuple[str, ...] | None = None

    def toml(self) -> str:
        delays = ", ".join(f'"{delay}"' for delay in self.delays)
        ordered = 'ordered_by = "partitionkey"\n' if self.ordered else ""
        return (
            f'[[subscriptions]]\nname = "{SUBSCRIPTION}"\nevents = ["scenario.*"]\n'
            f'handler = "tests.support.{self.handler}"\nprefetch = 8\nconcurrency = 4\n'
            # Both runs are compared by their outcome events.
            f'timeout = "{self.timeout}"\ncompletions = true\n{ordered}'
            f"[subscriptions.retry]\nin_process = {self.in_process}\ndelays = [{delays}]\n"
        )


def _event(event_id: str, data: dict[str, Any] | None = None, **extra: str) -> dict[str, Any]:
    return {
        "type": "scenario.ran",
        "id": event_id,
        "source": "/faithful",
        "data": data or {},
        **extra,
    }


_ORDERED = tuple(_event(f"o-{n}", {"fail": n == 1}, partitionkey="account-7") for n in (1, 2, 3))
SCENARIOS = {
    "success": Scenario("harness_handlers:succeed", ((_event("s-1"),),), (("succeeded", 1, None),)),
    "flaky-then-success": Scenario(
        "harness_handlers:flaky",
        ((_event("f-1", {"failures": 3}),),),
        (("succeeded", 4, None),),
        in_process=2,
        delays=("100ms", "100ms"),
    ),
    "always-failing-with-a-ladder": Scenario(
        "harness_handlers:always_fail",
        ((_event("a-1"),),),
        (("dead-lettered", 6, "retries-exhausted"),),
        in_process=2,
        delays=("100ms", "200ms"),
    ),
    "permanent-error": Scenario(
        "harness_handlers:permanent",
        ((_event("p-1"),),),
        (("dead-lettered", 1, "permanent-error"),),
        in_process=3,
        delays=("100ms",),
    ),
    "timeout": Scenario(
        "harness_handlers:slow",
        ((_event("t-1"),),),
        (("dead-lettered", 2, "retries-exhausted"),),
        in_process=2,
        timeout="200ms",
    ),
    "invalid-data": Scenario(
        "typed_harness_handlers:welcome",
        ((_event("i-1", {"email": "ada@example.com"}),), (_event("i-2", {}),)),
        (("succeeded", 1, None), ("dead-lettered", 0, "invalid-data")),
    ),
    "ordered-keys-with-a-failure": Scenario(
        "harness_handlers:fail_when_asked",
        (_ORDERED,),
        (("dead-lettered", 2, "retries-exhausted"), ("succeeded", 1, None), ("succeeded", 1, None)),
        delays=("100ms",),
        ordered=True,
        expected_calls=("o-1", "o-1", "o-2", "o-3"),
    ),
    "a-duplicate": Scenario(
        "harness_handlers:succeed",
        ((_event("d-1"),), (_event("d-1"),)),
        (("succeeded", 1, None), ("succeeded", 0, None)),
    ),
}


@dataclass
class Observed:
    """What one run came to: per event sent, (state, handler calls, reason), in order."""

    sent: list[tuple[str, int, str | None]] = field(default_factory=list)
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (event id, reason)
    calls: list[str] = field(default_factory=list)  # event ids, in call order


def _completion_facts(data: Any) -> tuple[str, str | None]:
    return str(data["state"]), data.get("reason")


async def run_in_harness(scenario: Scenario, path: Path) -> Observed:
    harness_handlers.CALLS.clear()
    observed = Observed()
    async with TestConveyor(path) as conveyor:
        for step in scenario.steps:
            for result in await conveyor.send_many(step):
                run = result.runs[SUBSCRIPTION]
                state, reason = _completion_facts(run.completions[-1].data)
                assert state == run.outcome
                observed.sent.append((state, len(run.attempts), reason))
        observed.dead_letters = [
            (str(letter.headers["ce-id"]), letter.reason) for letter in conveyor.dead_letters
        ]
    observed.calls = [event_id for event_id, _ in harness_handlers.CALLS]
    return observed


@contextlib.asynccontextmanager
async def completions_of(namespace: Namespace) -> AsyncIterator[AbstractQueue]:
    """A queue of this test's own bound to `{ns}.results`, gone with its connection."""
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(namespace.topology.results_exchange, routing_key="#")
        yield queue


async def run_on_rabbitmq(
    scenario: Scenario, path: Path, start_conveyor: StartConveyor, namespace: Namespace
) -> Observed:
    harness_handlers.CALLS.clear()
    observed = Observed()
    conveyor = await start_conveyor(load_subscriptions(path))
    sent_ids: Counter[str] = Counter()
    completions: dict[str, list[Any]] = {}
    async with completions_of(namespace) as results:
        for step in scenario.steps:
            before = Counter(event_id for event_id, _ in harness_handlers.CALLS)
            for document in step:
                await _send(document, sent_ids, conveyor, namespace)
            await _wait_for_completions(results, sent_ids, completions, step)
            after = Counter(event_id for event_id, _ in harness_handlers.CALLS)
            for document in step:
                event_id = document["id"]
                state, reason = _completion_facts(completions[event_id][sent_ids[event_id] - 1])
                observed.sent.append((state, after[event_id] - before[event_id], reason))
    letters = await namespace.take_all(namespace.topology.dead_letter_queue(SUBSCRIPTION))
    observed.dead_letters = [
        (str((letter.headers or {})["ce-id"]), str((letter.headers or {})["x-conveyor-reason"]))
        for letter in letters
    ]
    observed.calls = [event_id for event_id, _ in harness_handlers.CALLS]
    return observed


async def _send(
    document: dict[str, Any],
    sent_ids: Counter[str],
    conveyor: Running,
    namespace: Namespace,
) -> None:
    event_id = document["id"]
    if sent_ids[event_id]:
        # A repeat, as an AMQP publisher would send it: the ingress would not publish it again.
        wire = to_wire_message(event_to_publish(document))
        await namespace.publish_raw(
            wire.body,
            routing_key=document["type"],
            headers=dict(wire.headers or {}),
            content_type=wire.content_type,
            message_id=wire.message_id,
        )
    else:
        response = await conveyor.post(document)
        assert response.status == 202, await response.text()
    sent_ids[event_id] += 1


async def _wait_for_completions(
    results: AbstractQueue,
    sent_ids: Counter[str],
    completions: dict[str, list[Any]],
    step: Step,
) -> None:
    async def arrived() -> bool:
        while (message := await results.get(fail=False, no_ack=True)) is not None:
            data = orjson.loads(message.body)
            completions.setdefault(data["event"]["id"], []).append(data)
        return all(
            len(completions.get(document["id"], [])) >= sent_ids[document["id"]]
            for document in step
        )

    await eventually(arrived, timeout=30.0, what="a completion event for every event sent")


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_the_harness_decides_as_conveyor_on_rabbitmq_does(
    name: str, tmp_path: Path, start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    scenario = SCENARIOS[name]
    path = tmp_path / "subscriptions.toml"
    path.write_text(scenario.toml(), encoding="utf-8")

    in_memory = await run_in_harness(scenario, path)
    on_rabbitmq = await run_on_rabbitmq(scenario, path, start_conveyor, namespace)

    assert in_memory.sent == on_rabbitmq.sent
    assert sorted(in_memory.dead_letters) == sorted(on_rabbitmq.dead_letters)
    # Not only equal: equal to what the scenario says, so that a shared mistake shows too.
    assert in_memory.sent == list(scenario.expected)
    expected_letters = [
        (document["id"], reason)
        for document, (_, _, reason) in zip(
            (document for step in scenario.steps for document in step),
            scenario.expected,
            strict=True,
        )
        if reason is not None
    ]
    assert sorted(in_memory.dead_letters) == sorted(expected_letters)
    if scenario.expected_calls is not None:
        assert in_memory.calls == on_rabbitmq.calls == list(scenario.expected_calls)
