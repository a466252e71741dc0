"""After a replay from the DLQ succeeded, the status shows the success; the failure is history.

On SQLite and PostgreSQL, end to end: ingress, broker, consumer, admin replay, status API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.conftest import Running, StartConveyor, subscription
from tests.integration.test_cli_client import conveyor_cli
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

TOKEN = "ops-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def _entry(conveyor: Running, event_id: str) -> dict[str, Any]:
    status, found = await conveyor.status(f"/v1/events/{event_id}")
    assert status == 200, found
    entry: dict[str, Any] = found["subscriptions"]["orders"]
    return entry


async def test_a_replayed_dead_letter_that_succeeds_shows_succeeded_with_its_failure_in_history(
    start_conveyor: StartConveyor, store_url: str
) -> None:
    failing = True
    recorder = Recorder(fail=lambda _event: failing)
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), recorder),),
        admin_tokens=(("ops", TOKEN),),
        store_url=store_url,
    )
    document = {"type": "order.placed", "id": "h-1", "source": "/shop"}
    assert (await conveyor.post(document)).status == 202
    _, dead = await conveyor.status("/v1/events/h-1", wait="10s")
    assert dead["state"] == "dead-lettered"
    failed = dead["subscriptions"]["orders"]
    assert failed["last_error"]["reason"] == "retries-exhausted"

    failing = False
    response = await conveyor.client.post(
        "/v1/admin/subscriptions/orders/dead-letters/replay", json={"all": True}, headers=ADMIN
    )
    assert response.status == 200, await response.text()
    await recorder.wait_for(2)  # the first, failed attempt and the replay

    async def succeeded() -> bool:
        state: str = (await _entry(conveyor, "h-1"))["state"]
        return state == "succeeded"

    await eventually(succeeded, what="the replay's success in the status")
    _, found = await conveyor.status("/v1/events/h-1")
    assert (found["state"], found["done"]) == ("succeeded", True)
    entry = found["subscriptions"]["orders"]
    assert "last_error" not in entry  # the success is current: no error of its own
    assert entry["attempts"] == 1
    [earlier] = entry["history"]
    earlier_at = earlier.pop("at")
    # Kept to the microsecond: the same time, written back from whole microseconds.
    assert abs(_seconds(earlier_at) - _seconds(failed["finished_at"])) < 2e-6
    assert [earlier] == [
        {
            "state": "dead-lettered",
            "attempts": 1,
            "reason": "retries-exhausted",
            "last_error": {
                "class": "RuntimeError",
                "message": "told to fail on h-1",
                "reason": "retries-exhausted",
            },
        }
    ]
    # `conveyor status` shows it the same way.
    code, text = await conveyor_cli(conveyor, "status", "h-1")
    _, current, before = text.splitlines()
    assert code == 0
    assert current.split()[:2] == ["orders", "succeeded"]
    assert before.strip() == f"before a replay: dead-lettered (retries-exhausted) at {earlier_at}"
