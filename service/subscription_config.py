"""Reading `[[subscriptions]]` from the TOML file named by CONVEYOR_CONFIG."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any, cast

from consumers import Handler
from consumers.builtin import HandlerFactory
from consumers.ordering import (
    MAX_HOLD_SECONDS,
    MAX_PARTITIONS,
    ORDER_ATTRIBUTES,
    Ordering,
    longest_hold,
)
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from service.settings import SettingError, parse_duration

__all__ = ["load_subscriptions"]

SETTING = "CONVEYOR_CONFIG"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
# AMQP topic pattern: dot-separated words, each '*', '#' or characters other than '.'.
_PATTERN_WORD = re.compile(r"^(\*|#|[^.*#\s]+)$")
MAX_PATTERN_LENGTH = 255
RESERVED_NAMES = frozenset(("unrouted", "results", "events", "dlx", "archive"))
_KEYS = frozenset(
    (
        "name",
        "events",
        "handler",
        "prefetch",
        "concurrency",
        "timeout",
        "retry",
        "options",
        "deduplicate",
        "completions",
        "ordered_by",
        "partitions",
        "backfill",
    )
)
_RETRY_KEYS = frozenset(("in_process", "delays"))
MAX_PREFETCH = 10_000
MAX_IN_PROCESS = 10
MAX_TIERS = 20
# RabbitMQ takes a queue TTL up to 2^32-1 ms; a week is far below it and far beyond any sane tier.
MAX_DELAY_SECONDS = 7 * 24 * 3600
MIN_DELAY_SECONDS = 0.01


def load_subscriptions(path: Path) -> tuple[Subscription, ...]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SettingError(SETTING, f"a readable TOML file ({error})") from None
    entries = document.get("subscriptions", [])
    if not isinstance(entries, list):
        raise SettingError(SETTING, "[[subscriptions]] tables")
    subscriptions = tuple(_subscription(index, entry) for index, entry in enumerate(entries))
    names = [subscription.name for subscription in subscriptions]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SettingError(SETTING, f"unique subscription names; repeated: {', '.join(duplicates)}")
    return subscriptions


def _subscription(index: int, entry: Any) -> Subscription:
    where = f"subscriptions[{index}]"
    if not isinstance(entry, dict):
        raise SettingError(SETTING, f"{where} to be a table")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise SettingError(SETTING, f"{where} keys among {sorted(_KEYS)}; unknown: {unknown}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SettingError(SETTING, f"{where}.name of a-z, 0-9, '_' or '-'", repr(name))
    if name in RESERVED_NAMES:
        # {ns}.unrouted, {ns}.archive and {ns}.results are conveyor's own queues and exchange.
        raise SettingError(SETTING, f"{where}.name other than {sorted(RESERVED_NAMES)}", name)
    where = f"subscriptions[{index}] ({name})"
    events = entry.get("events")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(pattern, str) and _valid_pattern(pattern) for pattern in events)
    ):
        raise SettingError(
            SETTING, f"{where}.events as a non-empty list of topic patterns such as 'user.*'"
        )
    handler_path = entry.get("handler")
    if not isinstance(handler_path, str):
        raise SettingError(SETTING, f"{where}.handler as 'module:function'")
    handler = _handler(handler_path, entry.get("options"), where)
    prefetch = _positive(entry, "prefetch", 32, where)
    concurrency = _positive(entry, "concurrency", 16, where)
    if concurrency > prefetch:
        raise SettingError(SETTING, f"{where}.concurrency no larger than prefetch ({prefetch})")
    timeout = _duration(entry.get("timeout", "30s"), f"{where}.timeout", low=MIN_DELAY_SECONDS)
    retry = _retry(entry.get("retry", {}), where)
    return Subscription(
        name=name,
        events=tuple(events),
        handler=handler,
        handler_path=handler_path,
        prefetch=prefetch,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry,
        deduplicate=_flag(entry, "deduplicate", default=True, where=where),
        completions=_flag(entry, "completions", default=True, where=where),
        ordering=_ordering(entry, where, retry, timeout),
        backfill=(
            None
            if "backfill" not in entry
            else _duration(entry["backfill"], f"{where}.backfill", low=1.0)
        ),
    )


def _ordering(
    entry: dict[str, Any], where: str, retry: RetryPolicy, timeout: float
) -> Ordering | None:
    by = entry.get("ordered_by")
    if by is None:
        if "partitions" in entry:
            raise SettingError(SETTING, f"{where}.partitions only with ordered_by")
        return None
    if isinstance(by, str) and by.startswith("data."):
        # RabbitMQ can hash a header, not a field inside the body.
        raise SettingError(
            SETTING,
            f"{where}.ordered_by among {list(ORDER_ATTRIBUTES)} (a data field cannot be hashed "
            "by RabbitMQ: publish the key as the partitionkey extension, ce-partitionkey)",
            repr(by),
        )
    if by not in ORDER_ATTRIBUTES:
        raise SettingError(SETTING, f"{where}.ordered_by among {list(ORDER_ATTRIBUTES)}", repr(by))
    partitions = entry.get("partitions", 1)
    if (
        isinstance(partitions, bool)
        or not isinstance(partitions, int)
        or not 1 <= partitions <= MAX_PARTITIONS
    ):
        raise SettingError(
            SETTING,
            f"{where}.partitions as an integer from 1 to {MAX_PARTITIONS}",
            repr(partitions),
        )
    hold = longest_hold(retry, timeout)
    if hold > MAX_HOLD_SECONDS:
        # An ordered event waits out its retries holding its delivery, which RabbitMQ's
        # consumer_timeout (30 minutes by default) would take away.
        raise SettingError(
            SETTING,
            f"{where}.retry.delays and timeout that hold an ordered event at most "
            f"{MAX_HOLD_SECONDS // 60} minutes (attempts x timeout + delays: {hold:.0f}s)",
        )
    return Ordering(by=by, partitions=partitions)


def _flag(entry: dict[str, Any], key: str, *, default: bool, where: str) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise SettingError(SETTING, f"{where}.{key} as true or false", repr(value))
    return value


def _duration(value: Any, where: str, *, low: float, high: float | None = None) -> float:
    text = str(value) if isinstance(value, str | int | float) and value is not True else ""
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = -1.0
    if seconds < low or (high is not None and seconds > high):
        raise SettingError(SETTING, f"{where} as a duration such as 500ms, 10s, 1m", repr(value))
    return seconds


def _retry(table: Any, where: str) -> RetryPolicy:
    if not isinstance(table, dict):
        raise SettingError(SETTING, f"{where}.retry as a table")
    unknown = sorted(set(table) - _RETRY_KEYS)
    if unknown:
        raise SettingError(
            SETTING, f"{where}.retry keys among {sorted(_RETRY_KEYS)}; unknown: {unknown}"
        )
    default = RetryPolicy()
    in_process = table.get("in_process", default.in_process)
    if (
        isinstance(in_process, bool)
        or not isinstance(in_process, int)
        or not 1 <= in_process <= MAX_IN_PROCESS
    ):
        raise SettingError(
            SETTING, f"{where}.retry.in_process as an integer from 1 to {MAX_IN_PROCESS}"
        )
    raw_delays = table.get("delays")
    if raw_delays is None:
        return RetryPolicy(in_process=in_process, delays=default.delays)
    if not isinstance(raw_delays, list) or len(raw_delays) > MAX_TIERS:
        raise SettingError(
            SETTING, f"{where}.retry.delays as a list of at most {MAX_TIERS} durations"
        )
    delays = tuple(
        _duration(d, f"{where}.retry.delays[{i}]", low=MIN_DELAY_SECONDS, high=MAX_DELAY_SECONDS)
        for i, d in enumerate(raw_delays)
    )
    return RetryPolicy(in_process=in_process, delays=delays)


def _handler(path: str, options: Any, where: str) -> Handler:
    target = resolve_handler(path, where)
    if isinstance(target, HandlerFactory):
        if not isinstance(options, dict):
            raise SettingError(SETTING, f"{where}.options table for {path}")
        try:
            return target.build(options, parse_duration)
        except ValueError as error:
            raise SettingError(SETTING, f"{where}.{error}") from None
    if options is not None:
        raise SettingError(
            SETTING, f"{where}.options only with a built-in that takes them ({path} does not)"
        )
    return target


def _valid_pattern(pattern: str) -> bool:
    return 0 < len(pattern.encode()) <= MAX_PATTERN_LENGTH and all(
        _PATTERN_WORD.fullmatch(w) for w in pattern.split(".")
    )


def _positive(entry: dict[str, Any], key: str, default: int, where: str) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PREFETCH:
        raise SettingError(SETTING, f"{where}.{key} as an integer from 1 to {MAX_PREFETCH}")
    return value


def resolve_handler(path: str, where: str = "handler") -> Handler | HandlerFactory:
    """Import 'package.module:function': an async function, or a built-in handler factory."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SettingError(SETTING, f"{where}.handler as 'module:function'", path)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a module may fail to import in any way at all
        detail = f"{type(error).__name__}: {error}"
        raise SettingError(SETTING, f"{where}.handler importable ({detail})", path) from None
    handler = getattr(module, attribute, None)
    if isinstance(handler, HandlerFactory):
        return handler
    if not inspect.iscoroutinefunction(handler):
        raise SettingError(SETTING, f"{where}.handler naming an async function", path)
    return cast("Handler", handler)
