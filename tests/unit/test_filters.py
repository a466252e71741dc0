"""Attribute filters: Knative's dialect evaluated on an event's attributes; bad ones refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumers.filters import FilterError, all_match, describe_filter, parse_filters
from service import SettingError, load_subscriptions

ORDER = {
    "id": "1",
    "source": "/shop/eu/berlin",
    "type": "order.created",
    "specversion": "1.0",
    "subject": "Order-7",
    "priority": "high",
}

# (filter as written in TOML, attributes, passes?)
TABLE: list[tuple[dict[str, Any], dict[str, str], bool]] = [
    ({"exact": {"type": "order.created"}}, ORDER, True),
    ({"exact": {"type": "order"}}, ORDER, False),
    ({"exact": {"subject": "order-7"}}, ORDER, False),  # case-sensitive
    ({"exact": {"priority": "high"}}, ORDER, True),  # an extension
    ({"exact": {"region": "eu"}}, ORDER, False),  # missing attribute: no match
    ({"prefix": {"source": "/shop/eu"}}, ORDER, True),
    ({"prefix": {"source": "/shop/us"}}, ORDER, False),
    ({"prefix": {"source": "/SHOP"}}, ORDER, False),
    ({"prefix": {"region": "e"}}, ORDER, False),
    ({"suffix": {"type": ".created"}}, ORDER, True),
    ({"suffix": {"type": ".refund"}}, ORDER, False),
    ({"suffix": {"region": "u"}}, ORDER, False),
    ({"not": {"exact": {"subject": "test"}}}, ORDER, True),
    ({"not": {"exact": {"subject": "Order-7"}}}, ORDER, False),
    ({"not": {"exact": {"region": "eu"}}}, ORDER, True),  # not(missing) passes, as in Knative
    ({"all": [{"prefix": {"source": "/shop"}}, {"exact": {"priority": "high"}}]}, ORDER, True),
    ({"all": [{"prefix": {"source": "/shop"}}, {"exact": {"priority": "low"}}]}, ORDER, False),
    ({"any": [{"exact": {"priority": "low"}}, {"suffix": {"type": ".created"}}]}, ORDER, True),
    ({"any": [{"exact": {"priority": "low"}}, {"suffix": {"type": ".refund"}}]}, ORDER, False),
    ({"not": {"any": [{"exact": {"priority": "low"}}]}}, ORDER, True),
]


@pytest.mark.parametrize(("written", "attributes", "passes"), TABLE)
def test_each_dialect_on_an_event(
    written: dict[str, Any], attributes: dict[str, str], *, passes: bool
) -> None:
    filters = parse_filters([written])
    assert all_match(filters, attributes) is passes
    assert [describe_filter(each) for each in filters] == [written]


def test_every_entry_must_match_and_none_means_everything() -> None:
    issue = [
        {"prefix": {"source": "/shop/eu"}},
        {"not": {"exact": {"subject": "test"}}},
        {"any": [{"exact": {"priority": "high"}}, {"suffix": {"type": ".refund"}}]},
    ]
    filters = parse_filters(issue)
    assert all_match(filters, ORDER)
    assert not all_match(filters, {**ORDER, "subject": "test"})
    assert not all_match(filters, {**ORDER, "priority": "low"})
    assert all_match(filters, {**ORDER, "priority": "low", "type": "order.refund"})
    assert not all_match(filters, {**ORDER, "source": "/shop/us"})
    assert all_match(parse_filters([]), ORDER)


BAD: list[tuple[Any, str, str]] = [
    ("exact", "filters", "a list"),
    ([{"equals": {"type": "a"}}], "filters[0]", "one of"),
    ([{"exact": {"type": "a"}, "prefix": {"type": "a"}}], "filters[0]", "exactly one of"),
    ([{"exact": {"type": "a", "source": "b"}}], "filters[0].exact", "exactly one attribute"),
    ([{"exact": {}}], "filters[0].exact", "exactly one attribute"),
    ([{"exact": {"Type": "a"}}], "filters[0].exact", "lowercase letters and digits"),
    ([{"prefix": {"source": ""}}], "filters[0].prefix.source", "non-empty string"),
    ([{"suffix": {"source": 3}}], "filters[0].suffix.source", "non-empty string"),
    ([{"all": []}], "filters[0].all", "non-empty list"),
    ([{"any": {"exact": {"a": "b"}}}], "filters[0].any", "non-empty list"),
    ([{"not": [{"exact": {"a": "b"}}]}], "filters[0].not", "exactly one of"),
    (
        [{"exact": {"a": "b"}}, {"any": [{"exact": {"a": "b"}}, {"not": {"exakt": {"a": "b"}}}]}],
        "filters[1].any[1].not",
        "not 'exakt'",
    ),
]


@pytest.mark.parametrize(("written", "where", "why"), BAD)
def test_a_bad_filter_is_named_with_why(written: Any, where: str, why: str) -> None:
    with pytest.raises(FilterError) as refused:
        parse_filters(written)
    assert refused.value.where == where
    assert why in refused.value.what


def test_nesting_and_count_are_bounded() -> None:
    deep: dict[str, Any] = {"exact": {"a": "b"}}
    for _ in range(10):
        deep = {"not": deep}
    with pytest.raises(FilterError, match="nested at most"):
        parse_filters([deep])
    with pytest.raises(FilterError, match="at most 64 filters"):
        parse_filters([{"exact": {"a": "b"}}] * 65)


def test_the_issue_example_loads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "subscriptions.toml"
    path.write_text(
        """
[[subscriptions]]
name = "eu-orders"
events = ["order.#"]
handler = "consumers.builtin:discard"
filters = [
  { prefix = { source = "/shop/eu" } },
  { not = { exact = { subject = "test" } } },
  { any = [ { exact = { priority = "high" } }, { suffix = { type = ".refund" } } ] },
]
"""
    )
    [loaded] = load_subscriptions(path)
    assert len(loaded.filters) == 3
    assert all_match(loaded.filters, ORDER)


def test_a_bad_filter_in_the_file_names_the_subscription_and_the_filter(tmp_path: Path) -> None:
    path = tmp_path / "subscriptions.toml"
    path.write_text(
        """
[[subscriptions]]
name = "fine"
events = ["a"]
handler = "consumers.builtin:discard"

[[subscriptions]]
name = "eu-orders"
events = ["order.#"]
handler = "consumers.builtin:discard"
filters = [{ prefix = { source = "/shop/eu" } }, { any = [{ exact = { Priority = "high" } }] }]
"""
    )
    with pytest.raises(SettingError) as refused:
        load_subscriptions(path)
    message = str(refused.value)
    assert "subscriptions[1] (eu-orders).filters[1].any[0].exact" in message
    assert "'Priority'" in message
