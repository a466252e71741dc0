"""`conveyor serve --role ingress|worker|all`: the flag wins over CONVEYOR_ROLE (real processes)."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable

import aio_pika

from tests.support.namespace import Namespace
from tests.support.processes import ROOT, Process, conveyor_command, done_ids
from tests.support.waiting import eventually

Launch = Callable[..., Awaitable[Process]]


async def consumers_of(namespace: Namespace, queue: str) -> int:
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count or 0


async def test_role_ingress_flag_overrides_a_worker_environment(
    launch: Launch, namespace: Namespace
) -> None:
    process = await launch(flags=("--role", "ingress"), CONVEYOR_ROLE="worker")
    log = process.output.parent / "handled.log"
    event = {"type": "slow.job", "id": "via-ingress", "data": {"sleep": 0, "log": str(log)}}

    assert await process.post(event) == 202  # a worker would have no ingest route (404)
    queue = namespace.topology.queue("slow")
    assert await namespace.depth(queue) == 1  # accepted, and waiting: nobody consumes
    assert await consumers_of(namespace, queue) == 0
    assert done_ids(log) == {}


async def test_role_worker_flag_overrides_an_ingress_environment(
    launch: Launch, namespace: Namespace
) -> None:
    process = await launch(flags=("--role", "worker"), CONVEYOR_ROLE="ingress")
    log = process.output.parent / "handled.log"

    assert await process.post({"type": "slow.job", "id": "nope"}) == 404  # no ingest here
    await namespace.publish_raw(
        f'{{"sleep": 0, "log": "{log}"}}'.encode(),
        routing_key="slow.job",
        content_type="application/json",
        message_id="via-broker",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "via-broker",
            "ce-source": "/test",
            "ce-type": "slow.job",
        },
    )

    async def handled() -> bool:
        return done_ids(log)["via-broker"] == 1

    await eventually(handled, timeout=15, what="the worker to handle the event")
    assert await consumers_of(namespace, namespace.topology.queue("slow")) == 1


def test_serve_help_documents_the_role_flag_and_a_wrong_role_exits_2() -> None:
    helped = subprocess.run(  # noqa: S603 - our own entry point
        [*conveyor_command(), "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "--role {all,ingress,worker}" in helped.stdout
    assert "overrides CONVEYOR_ROLE" in " ".join(helped.stdout.split())

    wrong = subprocess.run(  # noqa: S603 - our own entry point
        [*conveyor_command(), "--role", "boss"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 2
    assert "invalid choice: 'boss'" in wrong.stderr
