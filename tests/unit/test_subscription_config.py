"""The subscriptions file: a good one loads, each mistake names where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers import builtin
from service import SettingError, load_subscriptions

HEAD = "[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = 'consumers.builtin:discard'\n"
GOOD = """
[[subscriptions]]
name = "audit"
events = ["user.*", "order.#"]
handler = "consumers.builtin:log_event"
prefetch = 20
concurrency = 5

[[subscriptions]]
name = "defaults"
events = ["x"]
handler = "consumers.builtin:discard"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subscriptions.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_defaults(tmp_path: Path) -> None:
    audit, defaults = load_subscriptions(write(tmp_path, GOOD))
    assert audit.name == "audit"
    assert audit.events == ("user.*", "order.#")
    assert audit.handler is builtin.log_event
    assert (audit.prefetch, audit.concurrency) == (20, 5)
    assert (defaults.prefetch, defaults.concurrency) == (32, 16)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[[subscriptions]]\nname = 'Bad Name'", "subscriptions[0].name"),
        ("[[subscriptions]]\nname = 'a'\nevents = []", "(a).events"),
        ("[[subscriptions]]\nname = 'a'\nevents = ['a..b c']", "(a).events"),
        ("[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = 'nomodule'", "(a).handler"),
        ("[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = 'no.such.mod:f'", "importable"),
        ("[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = 'json:dumps'", "async function"),
        (HEAD + "prefetch = 0", "(a).prefetch"),
        (HEAD + "prefetch = 2\nconcurrency = 4", "no larger than prefetch"),
        (HEAD + "retries = 3", "unknown: ['retries']"),
        (GOOD + GOOD, "repeated: audit, defaults"),
        ("subscriptions = 3", "[[subscriptions]]"),
        ("not toml at all [", "readable TOML"),
    ],
)
def test_each_mistake_names_the_setting_and_place(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(SettingError) as raised:
        load_subscriptions(write(tmp_path, text))
    assert raised.value.name == "CONVEYOR_CONFIG"
    assert fragment in str(raised.value)
