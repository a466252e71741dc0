"""Make sure the broker under test has the consistent-hash exchange, or say once how to get it.

Ordered subscriptions need RabbitMQ's `rabbitmq_consistent_hash_exchange` plugin, which a broker
with default plugins lacks. Without this check every ordered test fails on its own with
`unknown exchange type`; with it, the run enables the plugin where it can (a local broker and a
`rabbitmq-plugins` that works) and otherwise stops at the start with the one command to run.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid

import aio_pika
import aiormq.exceptions

from consumers.ordering import CONSISTENT_HASH, PLUGIN

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


async def has_consistent_hash(amqp_url: str) -> bool:
    """Declare (and delete) a throwaway exchange of the type: the broker's own answer."""
    name = f"test-plugin-probe-{uuid.uuid4().hex[:12]}"
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        try:
            await channel.declare_exchange(name, CONSISTENT_HASH, auto_delete=True)
        except (aiormq.exceptions.ChannelClosed, aiormq.exceptions.ConnectionClosed):
            return False
        await channel.exchange_delete(name)
    return True


def enable_plugin() -> str | None:
    """Run `rabbitmq-plugins enable`; None when it worked, else why not."""
    command = shutil.which("rabbitmq-plugins")
    if command is None:
        return "rabbitmq-plugins is not on PATH"
    done = subprocess.run(  # noqa: S603 - a fixed command found on PATH, no shell
        [command, "enable", PLUGIN], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip().splitlines()[-1:][0] or "it failed"
    return None


async def ensure_consistent_hash(amqp_url: str, host: str) -> str | None:
    """None when the broker has the exchange type (enabling it if local), else what to run."""
    if await has_consistent_hash(amqp_url):
        return None
    why = "the broker is not on this machine"
    if host in LOCAL_HOSTS:
        failure = await asyncio.to_thread(enable_plugin)
        if failure is None:
            # The plugin takes effect without a restart, but not always at once.
            for _ in range(20):
                if await has_consistent_hash(amqp_url):
                    return None
                await asyncio.sleep(0.5)
            failure = "enabled, but the exchange type did not appear"
        why = failure
    return (
        f"RabbitMQ at {host} has no '{CONSISTENT_HASH}' exchange type, which the ordered-"
        f"subscription tests need, and this run could not enable it ({why}). Run: "
        f"`rabbitmq-plugins enable {PLUGIN}` (no restart needed), then run the tests again."
    )
