"""Attribute filters: which of the events a subscription's type patterns route to it are handled.

The dialect is Knative Eventing's new Trigger filters (the CloudEvents Subscriptions API's
`filters`, without CESQL): `exact`, `prefix` and `suffix` compare one context attribute
(extensions included) with a string; `all`, `any` and `not` combine filters; every entry of a
subscription's `filters` must match. As in Knative:

- comparisons are case-sensitive, on the attribute's canonical string form (`time` as RFC 3339);
- an attribute the event does not carry matches no `exact`, `prefix` or `suffix` (so
  `not = { exact = { subject = "test" } }` matches an event without a subject);
- each `exact`, `prefix` and `suffix` names one attribute, of lowercase letters and digits
  (CloudEvents attribute names), with a non-empty value; a filter is one dialect.

Stricter than Knative, which lets them pass everything: an empty `all` or `any` is refused.

Hand-written: no maintained Python package evaluates this dialect, and it is a few lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AllOf",
    "AnyOf",
    "AttributeMatch",
    "Filter",
    "FilterError",
    "Not",
    "all_match",
    "describe_filter",
    "parse_filters",
]

_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")  # CloudEvents: lowercase letters and digits
MAX_FILTERS = 64  # filters in one subscription, nested ones included
MAX_DEPTH = 8
MAX_VALUE_LENGTH = 1024
_COMPARISONS = ("exact", "prefix", "suffix")
_COMBINATIONS = ("all", "any", "not")
DIALECTS = (*_COMPARISONS, *_COMBINATIONS)


class FilterError(ValueError):
    """A filter that cannot be used: `where` names it (`filters[2].any[0]`), `what` says why."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what


@dataclass(frozen=True, slots=True)
class AttributeMatch:
    """`exact`, `prefix` or `suffix`: one attribute's string against `value`."""

    dialect: str
    attribute: str
    value: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        found = attributes.get(self.attribute)
        if found is None:
            return False  # as Knative: a missing attribute fails the comparison
        if self.dialect == "exact":
            return found == self.value
        if self.dialect == "prefix":
            return found.startswith(self.value)
        return found.endswith(self.value)


@dataclass(frozen=True, slots=True)
class AllOf:
    filters: tuple[Filter, ...]

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(inner.matches(attributes) for inner in self.filters)


@dataclass(frozen=True, slots=True)
class AnyOf:
    filters: tuple[Filter, ...]

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return any(inner.matches(attributes) for inner in self.filters)


@dataclass(frozen=True, slots=True)
class Not:
    filter: Filter

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return not self.filter.matches(attributes)


Filter = AttributeMatch | AllOf | AnyOf | Not


def all_match(filters: Sequence[Filter], attributes: Mapping[str, str]) -> bool:
    """Whether an event with these context attributes passes every filter."""
    return all(each.matches(attributes) for each in filters)


def describe_filter(each: Filter) -> dict[str, Any]:
    """A filter as it was written (the TOML table's shape), for the admin API."""
    match each:
        case AttributeMatch(dialect, attribute, value):
            return {dialect: {attribute: value}}
        case AllOf(filters):
            return {"all": [describe_filter(inner) for inner in filters]}
        case AnyOf(filters):
            return {"any": [describe_filter(inner) for inner in filters]}
        case Not(inner):
            return {"not": describe_filter(inner)}


def parse_filters(entries: Any) -> tuple[Filter, ...]:
    """A subscription's `filters` list, as read from TOML; FilterError names the bad one."""
    if not isinstance(entries, list):
        raise FilterError("filters", 'a list of filters such as { exact = { source = "/a" } }')
    counter = [0]
    return tuple(
        _filter(entry, f"filters[{index}]", depth=1, counter=counter)
        for index, entry in enumerate(entries)
    )


def _filter(entry: Any, where: str, *, depth: int, counter: list[int]) -> Filter:
    counter[0] += 1
    if counter[0] > MAX_FILTERS:
        raise FilterError(
            where, f"at most {MAX_FILTERS} filters in a subscription, nested included"
        )
    if depth > MAX_DEPTH:
        raise FilterError(where, f"filters nested at most {MAX_DEPTH} deep")
    if not isinstance(entry, dict) or len(entry) != 1:
        raise FilterError(where, f"a table with exactly one of {list(DIALECTS)}")
    [(dialect, body)] = entry.items()
    inner = f"{where}.{dialect}"
    if dialect in _COMPARISONS:
        return _comparison(dialect, body, inner)
    if dialect == "not":
        return Not(_filter(body, inner, depth=depth + 1, counter=counter))
    if dialect in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise FilterError(inner, "a non-empty list of filters")
        parts = tuple(
            _filter(part, f"{inner}[{index}]", depth=depth + 1, counter=counter)
            for index, part in enumerate(body)
        )
        return AllOf(parts) if dialect == "all" else AnyOf(parts)
    raise FilterError(where, f"one of {list(DIALECTS)}, not {dialect!r}")


def _comparison(dialect: str, body: Any, where: str) -> AttributeMatch:
    if not isinstance(body, dict) or len(body) != 1:
        raise FilterError(where, 'exactly one attribute = "value" (Knative allows one)')
    [(attribute, value)] = body.items()
    if not _ATTRIBUTE.fullmatch(attribute):
        raise FilterError(
            where, f"an attribute name of lowercase letters and digits, not {attribute!r}"
        )
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE_LENGTH:
        raise FilterError(
            f"{where}.{attribute}", f"a non-empty string of at most {MAX_VALUE_LENGTH} characters"
        )
    return AttributeMatch(dialect, attribute, value)
