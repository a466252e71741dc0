"""A broker-free harness for handler authors: subscriptions run in memory, as the runtime runs them.

    from consumers.testing import TestConveyor

    async def test_welcome() -> None:
        async with TestConveyor("subscriptions.toml") as conveyor:
            result = await conveyor.send({"type": "user.signup", "data": {"email": "a@b.c"}})
            assert result.outcomes == {"welcome-email": "succeeded"}

Faithful by construction: every decision is the real runtime's own code. Each subscription is
assembled as `consumers.runtime.SubscriptionConsumer` assembles it (`consumers.pipeline`'s
`DeliveryPipeline` with its stages, so any check added to `checks()` applies here too; the
retry policy and `run_attempts`; the `Settler`'s verdicts and its `AckCoalescer`; the
`DeliveryOrder` of consumers.delivery_order, ordered or not; the `StatusReporter` and the
completion events). Only what faces RabbitMQ or the store is stood in for, in
consumers.testing.broker: the queues and a delivery's ack, nack and reject; the mover that
copies a delivery into a retry tier or the dead-letter queue and publishes completions; the
status ledger. The broker-side ladder, the pauses between in-process attempts and an ordered
subscription's retry waits run on a virtual clock (consumers.ordering.RetryClock): a `10m` tier
takes no real time. The handler's attempts, and so their timeouts, run in real time.

Layers: `consumers` never imports `service`, yet `TestConveyor("subscriptions.toml")` must read
the file exactly as `conveyor serve` does (the same checks, handler imports and built-in
options). The parser stays where it is, in service.subscription_config, and is lent to this
package through an entry point (group `conveyor.subscriptions_loaders`, declared in
pyproject.toml): the usual plugin seam, with which the dependency points from `service` to
here, never back. Without it installed, pass `Subscription` objects instead.

What is not modelled: the ingress's own idempotency (a repeated event id is published and
delivered again, as an AMQP publisher's repeat would be, and the consumer's deduplication skips
it), broker failures, shutdowns, and partitions (an ordered subscription keeps one order per
key in one queue, which is what its partitions guarantee).

A pytest plugin (consumers.testing.pytest_plugin, registered as `conveyor`) adds the
`conveyor_harness` fixture.
"""

from consumers.testing.conveyor import TestConveyor
from consumers.testing.results import Attempt, DeadLetter, SendResult, SubscriptionRun

__all__ = ["Attempt", "DeadLetter", "SendResult", "SubscriptionRun", "TestConveyor"]
