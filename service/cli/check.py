"""`conveyor check`: the settings and the subscriptions file checked without a broker, for CI.

Every handler is imported and its signature and typed-payload annotation read; patterns, retry
policies and ordering settings are checked as `serve` would. Exit 0 with what would be
declared; exit 2 with one line per problem (all of them, not only the first).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

import pydantic

from consumers.retry import delay_label
from consumers.subscription import Subscription
from producers.topology import Topology
from service.broker.topology_plan import plan_topology, render_topology
from service.settings import PREFIX, SettingError, load_settings
from service.subscription_config import read_subscriptions

__all__ = ["EXIT_PROBLEMS", "check_command", "describe_subscription"]

EXIT_PROBLEMS = 2


async def check_command(
    environ: Mapping[str, str], out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    try:
        settings = load_settings(environ)
    except SettingError as error:
        err.write(f"conveyor check: {error}\n")
        return EXIT_PROBLEMS
    if settings.config_path is None:
        err.write(f"conveyor check: {PREFIX}CONFIG: expected a subscriptions file to check\n")
        return EXIT_PROBLEMS
    subscriptions, problems = read_subscriptions(settings.config_path)
    if problems:
        err.writelines(f"conveyor check: {problem}\n" for problem in problems)
        return EXIT_PROBLEMS
    out.write(f"{settings.config_path}: {len(subscriptions)} subscriptions\n")
    out.writelines(describe_subscription(subscription) + "\n" for subscription in subscriptions)
    out.write(f"\nwould declare (namespace {settings.namespace}):\n")
    out.write(render_topology(await plan_topology(Topology(settings.namespace), subscriptions)))
    return 0


def describe_subscription(subscription: Subscription) -> str:
    """One line: what it takes, what runs it, how it retries and orders."""
    payload = subscription.payload
    data = "untyped data" if payload is None else f"data: {_type_name(payload)}"
    if subscription.validate_at_ingress:
        data += ", validated at the ingress"
    retry = subscription.retry
    ladder = ", ".join(delay_label(delay) for delay in retry.delays) or "no ladder"
    ordering = subscription.ordering
    order = "unordered" if ordering is None else f"ordered by {ordering.by} x{ordering.partitions}"
    return (
        f"  {subscription.name}: {' '.join(subscription.events)} -> {subscription.handler_path}"
        f" ({data}); prefetch {subscription.prefetch}, concurrency {subscription.concurrency},"
        f" timeout {subscription.timeout:g}s; {retry.in_process} in process, then {ladder}; "
        f"{order}"
    )


def _type_name(payload: pydantic.TypeAdapter[Any]) -> str:
    """The validated type's name: its JSON Schema's title (a model's, a dataclass's, ...)."""
    try:
        title = payload.json_schema().get("title")
    except pydantic.PydanticUserError:  # a type without a JSON Schema still validates
        title = None
    return title if isinstance(title, str) else "a typed payload"
