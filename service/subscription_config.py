"""Reading `[[subscriptions]]` from the TOML file named by CONVEYOR_CONFIG."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from consumers import Handler
from consumers.builtin import HandlerFactory
from consumers.filters import Filter, FilterError, parse_filters
from consumers.ordering import (
    MAX_HOLD_SECONDS,
    MAX_PARTITIONS,
    ORDER_ATTRIBUTES,
    Ordering,
    longest_hold,
)
from consumers.pacing import RateLimit, parse_rate
from consumers.payloads import HandlerSignatureError
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from service.settings import SettingError, parse_duration

__all__ = [
    "load_subscriptions",
    "read_subscriptions",
    "subscription_filters",
    "subscription_rate",
    "with_completions",
]

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
        "validate_at_ingress",
        "filters",
        "rate",
        "burst",
        "rate_scope",
        "backfill",
    )
)
RATE_SCOPES = ("process",)
_RETRY_KEYS = frozenset(("in_process", "delays"))
MAX_PREFETCH = 10_000
MAX_IN_PROCESS = 10
MAX_TIERS = 20
# RabbitMQ takes a queue TTL up to 2^32-1 ms; a week is far below it and far beyond any sane tier.
MAX_DELAY_SECONDS = 7 * 24 * 3600
MIN_DELAY_SECONDS = 0.01
_T = TypeVar("_T")


def load_subscriptions(
    path: Path, environ: Mapping[str, str] | None = None
) -> tuple[Subscription, ...]:
    """The file's subscriptions; raises the first problem found (see read_subscriptions)."""
    subscriptions, problems = read_subscriptions(path, environ)
    if problems:
        raise problems[0]
    return subscriptions


def read_subscriptions(
    path: Path, environ: Mapping[str, str] | None = None
) -> tuple[tuple[Subscription, ...], list[SettingError]]:
    """The subscriptions that are well declared, and every problem found in the file (each
    subscription is checked key by key, so one mistake does not hide the next). `environ` (the
    entry point's environment) resolves options that name a variable, such as a webhook's
    `secret_env`."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        return (), [SettingError(SETTING, f"a readable TOML file ({error})")]
    entries = document.get("subscriptions", [])
    if not isinstance(entries, list):
        return (), [SettingError(SETTING, "[[subscriptions]] tables")]
    problems: list[SettingError] = []
    loaded = (
        _subscription(index, entry, problems, environ or {}) for index, entry in enumerate(entries)
    )
    subscriptions = tuple(subscription for subscription in loaded if subscription is not None)
    names = [entry.get("name") for entry in entries if isinstance(entry, dict)]
    duplicates = sorted({name for name in names if isinstance(name, str) and names.count(name) > 1})
    if duplicates:
        problems.append(
            SettingError(SETTING, f"unique subscription names; repeated: {', '.join(duplicates)}")
        )
    return subscriptions, problems


def _subscription(
    index: int, entry: Any, problems: list[SettingError], environ: Mapping[str, str]
) -> Subscription | None:
    where = f"subscriptions[{index}]"
    if not isinstance(entry, dict):
        problems.append(SettingError(SETTING, f"{where} to be a table"))
        return None
    found = len(problems)
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        problems.append(
            SettingError(SETTING, f"{where} keys among {sorted(_KEYS)}; unknown: {unknown}")
        )
    name = _name(entry, where, problems)
    if name is None:
        return None
    where = f"subscriptions[{index}] ({name})"

    def checked(read: Callable[[], _T]) -> _T | None:
        try:
            return read()
        except SettingError as error:
            problems.append(error)
            return None

    fields: dict[str, Any] = {
        "name": name,
        "events": checked(lambda: tuple(_events(entry, where))),
        "handler": checked(
            lambda: _handler(entry.get("handler"), entry.get("options"), where, environ)
        ),
        "handler_path": entry.get("handler"),
        "prefetch": checked(lambda: _positive(entry, "prefetch", 32, where)),
        "concurrency": checked(lambda: _positive(entry, "concurrency", 16, where)),
        "timeout": checked(
            lambda: _duration(
                entry.get("timeout", "30s"), f"{where}.timeout", low=MIN_DELAY_SECONDS
            )
        ),
        "retry": checked(lambda: _retry(entry.get("retry", {}), where)),
        "deduplicate": checked(lambda: _flag(entry, "deduplicate", default=True, where=where)),
        "completions": checked(lambda: _optional_flag(entry, "completions", where=where)),
        "filters": checked(lambda: subscription_filters(entry.get("filters", []), where)),
        "backfill": checked(
            lambda: (
                None
                if "backfill" not in entry
                else _duration(entry["backfill"], f"{where}.backfill", low=1.0)
            )
        ),
        "validate_at_ingress": checked(
            lambda: _flag(entry, "validate_at_ingress", default=False, where=where)
        ),
    }
    prefetch, concurrency = fields["prefetch"], fields["concurrency"]
    if prefetch is not None and concurrency is not None and concurrency > prefetch:
        message = f"{where}.concurrency no larger than prefetch ({prefetch})"
        problems.append(SettingError(SETTING, message))
    if prefetch is not None:
        fields["rate"] = checked(lambda: subscription_rate(entry, where, prefetch))
    if fields["retry"] is not None and fields["timeout"] is not None:
        fields["ordering"] = checked(
            lambda: _ordering(entry, where, fields["retry"], fields["timeout"])
        )
    if len(problems) > found:
        return None
    return _built(fields, where, problems)


def _built(fields: dict[str, Any], where: str, problems: list[SettingError]) -> Subscription | None:
    """The subscription, once each of its keys has been read without a problem."""
    try:
        subscription = Subscription(**fields)
    except HandlerSignatureError as error:
        problems.append(SettingError(SETTING, f"{where}.handler usable ({error})"))
        return None
    if subscription.validate_at_ingress and subscription.payload is None:
        message = f"{where}.validate_at_ingress only with a typed handler (event: Event[Model])"
        problems.append(SettingError(SETTING, message))
        return None
    return subscription


def subscription_filters(filters: Any, where: str) -> tuple[Filter, ...]:
    """A subscription's `filters` (consumers.filters), checked; SettingError names the
    subscription (`where`, e.g. "subscriptions[0] (eu-orders)") and the filter that is wrong."""
    try:
        return parse_filters(filters)
    except FilterError as error:
        raise SettingError(SETTING, f"{where}.{error.where} as {error.what}") from None


def subscription_rate(entry: dict[str, Any], where: str, prefetch: int) -> RateLimit | None:
    """A subscription's `rate` with its `burst` and `rate_scope` (consumers.pacing), checked."""
    rate = entry.get("rate")
    if rate is None:
        for key in ("burst", "rate_scope"):
            if key in entry:
                raise SettingError(SETTING, f"{where}.{key} only with rate")
        return None
    scope = entry.get("rate_scope", "process")
    if scope not in RATE_SCOPES:
        # A limit shared by the workers over the store is not built: say so instead of
        # quietly applying it per process.
        raise SettingError(SETTING, f"{where}.rate_scope among {list(RATE_SCOPES)}", repr(scope))
    try:
        limit = parse_rate(rate, entry.get("burst"))
    except ValueError as error:
        key = "burst" if str(error).startswith("burst") else "rate"
        value = entry.get(key)
        raise SettingError(SETTING, f"{where}.{error}", repr(value)) from None
    held = prefetch / limit.per_second
    if held > MAX_HOLD_SECONDS:
        # The last of `prefetch` deliveries would wait that long for its start, unacked, and
        # RabbitMQ's consumer_timeout (30 minutes by default) would take it back, again and again.
        raise SettingError(
            SETTING,
            f"{where}.rate and prefetch that start every delivery held within "
            f"{MAX_HOLD_SECONDS // 60} minutes (prefetch / rate: {held:.0f}s; lower prefetch)",
        )
    return limit


def _name(entry: dict[str, Any], where: str, problems: list[SettingError]) -> str | None:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(SettingError(SETTING, f"{where}.name of a-z, 0-9, '_' or '-'", repr(name)))
        return None
    if name in RESERVED_NAMES:
        # {ns}.unrouted, {ns}.archive and {ns}.results are conveyor's own queues and exchange.
        message = f"{where}.name other than {sorted(RESERVED_NAMES)}"
        problems.append(SettingError(SETTING, message, name))
    return name


def _events(entry: dict[str, Any], where: str) -> list[str]:
    events = entry.get("events")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(pattern, str) and _valid_pattern(pattern) for pattern in events)
    ):
        raise SettingError(
            SETTING, f"{where}.events as a non-empty list of topic patterns such as 'user.*'"
        )
    return events


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


def _optional_flag(entry: dict[str, Any], key: str, *, where: str) -> bool | None:
    """A flag the file may leave unset (None): a setting then decides for it."""
    return _flag(entry, key, default=False, where=where) if key in entry else None


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


def _handler(path: Any, options: Any, where: str, environ: Mapping[str, str]) -> Handler:
    if not isinstance(path, str):
        raise SettingError(SETTING, f"{where}.handler as 'module:function'")
    target = resolve_handler(path, where)
    if isinstance(target, HandlerFactory):
        if not isinstance(options, dict):
            raise SettingError(SETTING, f"{where}.options table for {path}")
        try:
            return target.build(options, parse_duration, environ)
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


def with_completions(
    subscriptions: Sequence[Subscription], *, default: bool
) -> tuple[Subscription, ...]:
    """Each subscription that leaves `completions` unset gets CONVEYOR_COMPLETIONS' value."""
    return tuple(
        dataclasses.replace(subscription, completions=default)
        if subscription.completions is None
        else subscription
        for subscription in subscriptions
    )
