"""Log lines of one event carry its id, type, subscription and correlation id."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from structlog.testing import capture_logs

from consumers.retry import RetryPolicy
from tests.conftest import StartConveyor, subscription
from tests.support.processes import Process, free_port
from tests.support.recorder import Recorder
from tests.support.waiting import eventually


async def test_consumer_log_lines_carry_the_event_context(start_conveyor: StartConveyor) -> None:
    recorder = Recorder(fail=lambda event: event.attempt == 1)
    conveyor = await start_conveyor(
        (subscription("logged", ("logged.*",), recorder, retry=RetryPolicy(2, ())),)
    )

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = await conveyor.client.post(
            "/v1/events",
            json={"type": "logged.thing", "id": "log-1"},
            headers={"X-Correlation-ID": "corr-log"},
        )
        assert response.status == 202
        await recorder.wait_for(2)

        async def acked() -> bool:
            return any(line["event"] == "event handled" for line in logs)

        await eventually(acked, timeout=5, what="the ack's log line")

    failed = next(line for line in logs if line["event"] == "handler failed; retrying in process")
    assert failed["event_id"] == "log-1"
    assert failed["event_type"] == "logged.thing"
    assert failed["subscription"] == "logged"
    assert failed["correlation_id"] == "corr-log"
    assert failed["error_class"] == "RuntimeError"
    assert failed["attempt_in_delivery"] == 1
    handled = [line for line in logs if line["event"] == "event handled"]
    assert [(line["event_id"], line["subscription"]) for line in handled] == [("log-1", "logged")]


async def test_json_logs_are_json_on_every_line_library_lines_included(
    launch: Callable[..., Awaitable[Process]],
) -> None:
    # A broker that refuses connections makes aiormq log through the standard library.
    process = await launch(
        wait_ready=False,
        CONVEYOR_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        CONVEYOR_LOG_FORMAT="json",
    )

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in process.output.read_text().splitlines()]

    async def aiormq_logged() -> bool:
        return any(str(line.get("logger", "")).startswith("aiormq") for line in lines())

    await eventually(aiormq_logged, timeout=15, what="a line from aiormq's own logger")
    library = next(line for line in lines() if str(line.get("logger", "")).startswith("aiormq"))
    assert {"event", "level", "timestamp"} <= library.keys()


async def test_console_logs_have_no_colour_codes_when_not_a_terminal(
    launch: Callable[..., Awaitable[Process]],
) -> None:
    process = await launch(CONVEYOR_LOG_FORMAT="console")
    await process.post({"type": "slow.fast", "id": "console-1"})

    async def started() -> bool:
        return "conveyor started" in process.output.read_text()

    await eventually(started, timeout=10, what="the start line")
    text = process.output.read_text()
    assert "\x1b[" not in text
