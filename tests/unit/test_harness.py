"""consumers.testing.TestConveyor on its own: the virtual clock, what `send` takes and gives back,
stages it picks up from the pipeline, and what it refuses. Its faithfulness to conveyor on
RabbitMQ is tests/integration/test_harness_faithful.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumers import Event, PermanentError
from consumers.attempts import HandlerTimeoutError
from consumers.deferral import DeferUntilDue
from consumers.observe import DeliveryObserver
from consumers.ordering import Ordering
from consumers.reporting import StatusReporter
from consumers.retry import IN_PROCESS_MAX_WAIT_SECONDS, RetryPolicy
from consumers.settling import Outcome, Settler, Verdict
from consumers.stages import Judging, Stage
from consumers.status import DeliveryState
from consumers.subscription import Subscription
from consumers.testing import TestConveyor
from consumers.testing import conveyor as harness_module
from consumers.testing.events import INGRESS_SOURCE
from producers import InvalidEventError, new_event
from service.http.cloudevents import DEFAULT_SOURCE


def _subscription(
    name: str,
    handler: Callable[[Event], Any],
    *,
    events: tuple[str, ...] = ("job.*",),
    retry: RetryPolicy = RetryPolicy(in_process=1, delays=()),  # noqa: B008 - frozen
    **options: Any,
) -> Subscription:
    return Subscription(
        name=name,
        events=events,
        handler=handler,
        handler_path=f"tests:{name}",
        retry=retry,
        **options,
    )


class Calls:
    """A handler that records each event and fails its first `failures` attempts."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RuntimeError("not yet")
        self.seen: list[tuple[str, int]] = []

    async def __call__(self, event: Event) -> None:
        self.seen.append((event.id, event.attempt))
        if event.attempt <= self.failures:
            raise self.error


async def test_a_ladder_of_minutes_and_hours_runs_on_the_virtual_clock() -> None:
    always = Calls(failures=99)
    ladder = RetryPolicy(in_process=1, delays=(600.0, 3600.0))
    async with TestConveyor([_subscription("jobs", always, retry=ladder)]) as conveyor:
        result = await conveyor.send({"type": "job.run", "id": "j-1"})
        assert result.outcomes == {"jobs": "dead-lettered"}
        assert [attempt.at for attempt in result.attempts["jobs"]] == [0.0, 600.0, 4200.0]
        assert result.runs["jobs"].settlements == [
            "retry-scheduled",
            "retry-scheduled",
            "dead-lettered",
        ]
        letter = result.dead_letters["jobs"]
        assert (letter.reason, letter.attempts, letter.error_class) == (
            "retries-exhausted",
            3,
            "RuntimeError",
        )
        assert conveyor.clock.now() == 4200.0


async def test_an_ordered_retry_wait_is_virtual_and_holds_its_key() -> None:
    calls = Calls()

    async def handler(event: Event) -> None:
        await calls(event)
        if event.data.get("fail"):
            raise RuntimeError("asked to fail")

    ordered = _subscription(
        "ledger",
        handler,
        retry=RetryPolicy(in_process=1, delays=(60.0, 600.0)),
        ordering=Ordering(by="partitionkey"),
    )
    events = [
        {"type": "job.post", "id": "a-1", "partitionkey": "a", "data": {"fail": True}},
        {"type": "job.post", "id": "b-1", "partitionkey": "b", "data": {}},
        {"type": "job.post", "id": "a-2", "partitionkey": "a", "data": {}},
    ]
    async with TestConveyor([ordered]) as conveyor:
        first, other_key, second = await conveyor.send_many(events)
    assert [attempt.at for attempt in first.attempts["ledger"]] == [0.0, 60.0, 660.0]
    assert first.dead_letters["ledger"].reason == "retries-exhausted"
    assert other_key.outcomes == second.outcomes == {"ledger": "succeeded"}
    key_a = [event_id for event_id, _ in calls.seen if event_id.startswith("a-")]
    assert key_a == ["a-1", "a-1", "a-1", "a-2"]
    assert second.attempts["ledger"][0].at == 660.0  # it waited for a-1's whole ladder


async def test_each_failed_attempt_keeps_its_error() -> None:
    flaky = Calls(failures=2, error=ConnectionError("refused"))
    retry = RetryPolicy(in_process=3, delays=())
    async with TestConveyor([_subscription("jobs", flaky, retry=retry)]) as conveyor:
        result = await conveyor.send({"type": "job.run"})
    assert result.outcomes == {"jobs": "succeeded"}
    run = result.runs["jobs"]
    assert [attempt.number for attempt in run.attempts] == [1, 2, 3]
    assert [type(error) for error in run.errors] == [ConnectionError, ConnectionError]
    assert [attempt.failed for attempt in run.attempts] == [True, True, False]
    # The jittered pauses between in-process attempts pass on the virtual clock too.
    moments = [attempt.at for attempt in run.attempts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
    assert all(0.0 < gap <= IN_PROCESS_MAX_WAIT_SECONDS for gap in gaps), moments


async def test_a_timed_out_attempt_fails_with_the_runtime_s_timeout_error() -> None:
    async def stuck(event: Event) -> None:
        await asyncio.Event().wait()

    jobs = _subscription("jobs", stuck, timeout=0.05)
    async with TestConveyor([jobs]) as conveyor:
        result = await conveyor.send({"type": "job.run"})
    (error,) = result.runs["jobs"].errors
    assert isinstance(error, HandlerTimeoutError)
    assert str(error) == "handler ran past its timeout of 0.05s"
    assert result.dead_letters["jobs"].error_class == "HandlerTimeoutError"


async def test_send_takes_what_the_ingress_takes() -> None:
    calls = Calls()
    async with TestConveyor([_subscription("jobs", calls, events=("#",))]) as conveyor:
        plain = await conveyor.send({"type": "job.run", "data": {"n": 1}})
        full = await conveyor.send(
            {
                "specversion": "1.0",
                "type": "job.run",
                "id": "c-1",
                "source": "/crm",
                "subject": "42",
                "data_base64": "aGk=",
                "datacontenttype": "text/plain",
            }
        )
        built = await conveyor.send(new_event("job.run", {"n": 2}, id="n-1", source="/built"))
        with pytest.raises(InvalidEventError, match="'type' is missing"):
            await conveyor.send({"id": "no-type"})
        with pytest.raises(InvalidEventError):
            await conveyor.send({"type": "job.run", "source": ""})
        with pytest.raises(InvalidEventError):
            await conveyor.send(new_event("job.run", source=""))
    assert plain.source == INGRESS_SOURCE == DEFAULT_SOURCE  # as the ingress fills it in
    assert (full.event_id, full.source, built.event_id) == ("c-1", "/crm", "n-1")
    assert [outcome for result in (plain, full, built) for outcome in result.outcomes.values()] == [
        "succeeded"
    ] * 3


async def test_an_event_no_subscription_matches_has_no_outcomes() -> None:
    async with TestConveyor([_subscription("jobs", Calls())]) as conveyor:
        result = await conveyor.send({"type": "invoice.paid"})
    assert result.outcomes == {}
    assert result.completions == []


async def test_completions_are_the_events_results_would_carry() -> None:
    async def refuse(event: Event) -> None:
        raise PermanentError("no")

    subscriptions = [
        _subscription("welcome", Calls(), completions=True),
        _subscription("audit", refuse, completions=True),
        _subscription("quiet", Calls()),  # completions are opt-in
    ]
    async with TestConveyor(subscriptions) as conveyor:
        result = await conveyor.send({"type": "job.run", "id": "e-1", "source": "/s"})
    assert result.outcomes == {
        "welcome": "succeeded",
        "audit": "dead-lettered",
        "quiet": "succeeded",
    }
    announced = {event.extensions["subscription"]: event for event in result.completions}
    assert conveyor.completions == result.completions
    assert set(announced) == {"welcome", "audit"}
    assert announced["welcome"].type == "conveyor.event.succeeded"
    assert announced["audit"].type == "conveyor.event.dead_lettered"
    assert announced["audit"].data["reason"] == "permanent-error"
    assert announced["audit"].data["event"] == {"id": "e-1", "source": "/s", "type": "job.run"}
    assert announced["audit"].subject == "e-1"
    letter = result.dead_letters["audit"]
    assert letter.headers["x-conveyor-original-exchange"] == "conveyor.events"


async def test_a_repeat_of_a_succeeded_event_is_skipped_unless_deduplication_is_off() -> None:
    once, every_time = Calls(), Calls()
    subscriptions = [
        _subscription("once", once),
        _subscription("every-time", every_time, deduplicate=False),
    ]
    event = {"type": "job.run", "id": "r-1", "source": "/s"}
    async with TestConveyor(subscriptions) as conveyor:
        await conveyor.send(event)
        repeat = await conveyor.send(event)
    assert repeat.outcomes == {"once": "succeeded", "every-time": "succeeded"}
    assert repeat.runs["once"].skipped
    assert not repeat.runs["every-time"].skipped
    assert (len(once.seen), len(every_time.seen)) == (1, 2)


async def test_a_stage_added_to_the_pipeline_s_checks_applies_in_the_harness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class SkipNightly:
        async def __call__(self, judging: Judging) -> Verdict | None:
            if judging.event.type != "job.nightly":
                return None
            return Verdict(Outcome.SKIPPED, status=judging.status(DeliveryState.SUCCEEDED, 0))

    def with_nightly(
        subscription: Subscription,
        reporter: StatusReporter,
        observer: DeliveryObserver,
        settler: Settler,
        deferral: DeferUntilDue | None = None,
    ) -> tuple[Stage, ...]:
        return (*real_checks(subscription, reporter, observer, settler, deferral), SkipNightly())

    from consumers import pipeline  # noqa: PLC0415 - patched where the pipeline looks it up

    real_checks = pipeline.checks
    monkeypatch.setattr(pipeline, "checks", with_nightly)
    calls = Calls()
    async with TestConveyor([_subscription("jobs", calls)]) as conveyor:
        nightly = await conveyor.send({"type": "job.nightly"})
        daily = await conveyor.send({"type": "job.daily"})
    assert nightly.runs["jobs"].skipped
    assert not daily.runs["jobs"].skipped
    assert [event_id for event_id, _ in calls.seen] == [daily.event_id]


async def test_a_subscriptions_file_is_loaded_as_serve_loads_it(tmp_path: Path) -> None:
    path = tmp_path / "subscriptions.toml"
    path.write_text(
        '[[subscriptions]]\nname = "orders"\nevents = ["order.*"]\n'
        'handler = "examples.handlers:record_order"\n',
        encoding="utf-8",
    )
    async with TestConveyor(path) as conveyor:
        assert [s.name for s in conveyor.subscriptions] == ["orders"]
        result = await conveyor.send({"type": "order.placed", "data": {"total": 3}})
    assert result.outcomes == {"orders": "succeeded"}


def test_without_the_service_s_loader_a_file_is_refused_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(harness_module, "entry_points", lambda **_: ())
    with pytest.raises(LookupError, match="pass the subscriptions as Subscription objects"):
        TestConveyor("subscriptions.toml")


def test_pytest_never_collects_the_harness() -> None:
    assert TestConveyor.__test__ is False


def test_the_fixture_runs_the_ini_option_s_file(conveyor_harness: TestConveyor) -> None:
    # pyproject.toml's conveyor_subscriptions names examples/subscriptions.toml.
    names = {subscription.name for subscription in conveyor_harness.subscriptions}
    assert names == {"welcome-email", "orders", "audit-log"}


async def test_a_closed_harness_refuses_to_send() -> None:
    async with TestConveyor([_subscription("jobs", Calls())]) as conveyor:
        await conveyor.send({"type": "job.run"})
    with pytest.raises(RuntimeError, match="closed"):
        await conveyor.send({"type": "job.run"})
