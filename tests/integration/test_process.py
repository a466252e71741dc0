"""`conveyor serve` as a real process: settings errors, graceful shutdown on SIGTERM, no secrets."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support.namespace import Namespace
from tests.support.processes import (
    ROOT,
    Process,
    conveyor_command,
    handler_log,
)
from tests.support.waiting import eventually


def run_briefly(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own entry point with a fixed argument list
        conveyor_command(),
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "value", "accepts"),
    [
        ("CONVEYOR_HTTP_PORT", "eighty", "an integer from 0 to 65535"),
        ("CONVEYOR_ROLE", "boss", "one of all, ingress, worker"),
        ("CONVEYOR_PUBLISH_TIMEOUT", "soon", "a duration"),
        ("CONVEYOR_NAMESPACE", "Has Spaces", "1-64 characters"),
        ("CONVEYOR_LOG_FORMAT", "xml", "one of json, console"),
        ("CONVEYOR_CONFIG", "/nonexistent.toml", "the path of a readable TOML file"),
    ],
)
def test_a_wrong_setting_exits_2_with_one_line_naming_it(
    name: str, value: str, accepts: str
) -> None:
    result = run_briefly({name: value})

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"conveyor: {name}: expected {accepts}")
    assert result.stdout == ""


def test_a_wrong_amqp_url_is_named_without_echoing_the_password() -> None:
    result = run_briefly({"CONVEYOR_AMQP_URL": "http://user:hunter2@example/"})

    assert result.returncode == 2
    assert "CONVEYOR_AMQP_URL" in result.stderr
    assert "hunter2" not in result.stderr


def test_a_subscription_with_a_missing_handler_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "subs.toml"
    config.write_text(
        '[[subscriptions]]\nname = "x"\nevents = ["a.b"]\nhandler = "tests.support.handlers:nope"\n'
    )

    result = run_briefly({"CONVEYOR_CONFIG": str(config)})

    assert result.returncode == 2
    assert "CONVEYOR_CONFIG: expected subscriptions[0] (x).handler naming an async function" in (
        result.stderr
    )


def test_serve_help_documents_every_setting() -> None:
    result = subprocess.run(  # noqa: S603 - our own entry point
        [*conveyor_command(), "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for setting in (
        "AMQP_URL", "HTTP_HOST", "HTTP_PORT", "CONFIG", "NAMESPACE", "ROLE", "LOG_FORMAT",
        "LOG_LEVEL", "MAX_BODY_BYTES", "PUBLISH_TIMEOUT", "SHUTDOWN_TIMEOUT", "API_KEYS",
    ):  # fmt: skip
        assert f"CONVEYOR_{setting}" in result.stdout


async def test_sigterm_drains_running_handlers_and_returns_the_rest_to_the_queue(
    launch: Callable[..., Awaitable[Process]], namespace: Namespace, tmp_path: Path
) -> None:
    process = await launch(CONVEYOR_SHUTDOWN_TIMEOUT="20s", CONVEYOR_DRAIN_DELAY="1s")
    log = tmp_path / "handled.log"
    for n in range(6):
        assert (
            await process.post(
                {"type": "slow.job", "id": f"job-{n}", "data": {"sleep": 1.5, "log": str(log)}}
            )
            == 202
        )

    async def two_started() -> bool:
        return len([line for line in handler_log(log) if line.startswith("start")]) == 2

    await eventually(two_started, timeout=10, what="two handlers to start")
    process.popen.send_signal(signal.SIGTERM)

    # Readiness turns 503 first, while the listener still answers (CONVEYOR_DRAIN_DELAY).
    assert await process.get("/readyz") == 503
    assert await process.exited(timeout=20) == 0
    lines = handler_log(log)
    started = {line.split()[1] for line in lines if line.startswith("start")}
    done = {line.split()[1] for line in lines if line.startswith("done")}
    assert len(started) == 2
    assert done == started  # the running handlers were allowed to finish
    # The four never started are back in the queue: nothing accepted was lost.
    assert await namespace.depth(namespace.topology.queue("slow")) == 4


async def test_a_handler_past_the_shutdown_timeout_is_cancelled_and_its_event_requeued(
    launch: Callable[..., Awaitable[Process]], namespace: Namespace, tmp_path: Path
) -> None:
    process = await launch(CONVEYOR_SHUTDOWN_TIMEOUT="1s")
    log = tmp_path / "stuck.log"
    document = {"type": "slow.stuck", "id": "stuck-1", "data": {"sleep": 60, "log": str(log)}}
    assert await process.post(document) == 202

    async def started() -> bool:
        return handler_log(log) == ["start stuck-1"]

    await eventually(started, timeout=10, what="the stuck handler to start")
    process.popen.send_signal(signal.SIGTERM)

    assert await process.exited(timeout=15) == 0
    assert handler_log(log) == ["start stuck-1"]
    [returned] = await namespace.take_all(namespace.topology.queue("slow"))
    assert returned.message_id == "stuck-1"


async def test_no_secret_reaches_the_logs(
    launch: Callable[..., Awaitable[Process]], amqp_url: str, tmp_path: Path
) -> None:
    # guest's password is the secret in the URL here; API keys are the other kind.
    password = URL(amqp_url).password or "guest"
    process = await launch(
        CONVEYOR_API_KEYS="key-top-secret-1,key-top-secret-2", CONVEYOR_LOG_LEVEL="debug"
    )
    log = tmp_path / "s.log"
    assert await process.post({"type": "slow.x", "data": {"sleep": 0, "log": str(log)}}) == 401
    assert (
        await process.post(
            {"type": "slow.x", "data": {"sleep": 0, "log": str(log)}}, token="key-top-secret-2"
        )
        == 202
    )

    async def handled() -> bool:
        return bool(handler_log(log))

    await eventually(handled, timeout=10, what="the event to be handled")
    process.popen.send_signal(signal.SIGTERM)
    assert await process.exited(timeout=15) == 0

    output = process.output.read_text()
    assert "broker link up" in output
    assert "key-top-secret" not in output
    assert f":{password}@" not in output


async def test_two_processes_on_one_postgresql_store_agree(
    launch: Callable[..., Awaitable[Process]], postgres_url: str, tmp_path: Path
) -> None:
    ingress = await launch(CONVEYOR_ROLE="ingress", CONVEYOR_STORE_URL=postgres_url)
    worker = await launch(CONVEYOR_STORE_URL=postgres_url)
    log = tmp_path / "handled.log"
    document = {
        "type": "slow.job",
        "id": "p-1",
        "source": "/procs",
        "data": {"sleep": 0.2, "log": str(log)},
    }
    headers = {"Idempotency-Key": "two-procs"}

    async with aiohttp.ClientSession() as session:
        answers = []
        for process in (ingress, worker, ingress):
            url = process.base / "v1/events"
            async with session.post(url, json=document, headers=headers) as response:
                answers.append((response.status, await response.json()))
        # The ingress waits for an outcome only the worker process produces.
        url = ingress.base / "v1/events/p-1"
        async with session.get(url, params={"wait": "20s"}) as response:
            seen_by_ingress = await response.json()
        async with session.get(worker.base / "v1/events/p-1") as response:
            seen_by_worker = await response.json()

    assert {status for status, _ in answers} == {202}
    assert {body["id"] for _, body in answers} == {"p-1"}
    assert seen_by_ingress["subscriptions"]["slow"]["state"] == "succeeded"
    assert seen_by_ingress == seen_by_worker
    assert handler_log(log) == ["start p-1", "done p-1"]  # handled once
