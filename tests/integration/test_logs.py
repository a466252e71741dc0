"""Log lines of one event carry its id, type, subscription and correlation id."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from consumers import RetryPolicy
from tests.conftest import StartConveyor, subscription
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
