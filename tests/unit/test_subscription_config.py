"""The subscriptions file: a good one loads, each mistake names where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers import builtin
from consumers.retry import RetryPolicy
from consumers.webhook import Webhook
from service import SettingError, load_settings, load_subscriptions
from service.subscription_config import with_completions

HEAD = "[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = 'consumers.builtin:discard'\n"
HOOK = '[[subscriptions]]\nname = "hook"\nevents = ["a"]\nhandler = "consumers.builtin:webhook"\n'
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


def test_timeout_retry_and_webhook_options(tmp_path: Path) -> None:
    text = (
        HEAD
        + 'timeout = "5s"\n[subscriptions.retry]\nin_process = 2\ndelays = ["500ms", "1m"]\n'
        + HOOK
        + '[subscriptions.options]\nurl = "https://example.com/in"\ntimeout = "3s"\n'
    )
    plain, hook = load_subscriptions(write(tmp_path, text))
    assert plain.timeout == 5.0
    assert plain.retry == RetryPolicy(in_process=2, delays=(0.5, 60.0))
    assert isinstance(hook.handler, Webhook)
    assert hook.handler.options.url == "https://example.com/in"
    assert hook.handler.options.timeout == 3.0
    assert hook.retry == RetryPolicy()


def test_a_good_file_loads_with_defaults(tmp_path: Path) -> None:
    audit, defaults = load_subscriptions(write(tmp_path, GOOD))
    assert audit.name == "audit"
    assert audit.events == ("user.*", "order.#")
    assert audit.handler is builtin.log_event
    assert (audit.prefetch, audit.concurrency) == (20, 5)
    assert (defaults.prefetch, defaults.concurrency) == (32, 16)
    assert defaults.deduplicate is True
    # Unset: CONVEYOR_COMPLETIONS decides (with_completions), off by default.
    assert defaults.completions is None
    assert with_completions([defaults], default=False)[0].completions is False
    assert with_completions([defaults], default=True)[0].completions is True


def test_a_subscription_can_opt_out_of_deduplication(tmp_path: Path) -> None:
    [audit] = load_subscriptions(write(tmp_path, HEAD + "deduplicate = false"))
    assert audit.deduplicate is False


def test_a_subscription_can_opt_out_of_completion_events(tmp_path: Path) -> None:
    [audit] = load_subscriptions(write(tmp_path, HEAD + "completions = false"))
    assert (audit.completions, audit.deduplicate) == (False, True)
    # Its own word stands over the setting that turns completions on for the rest.
    assert with_completions([audit], default=True)[0].completions is False


def test_a_subscription_can_opt_in_to_completion_events(tmp_path: Path) -> None:
    [audit] = load_subscriptions(write(tmp_path, HEAD + "completions = true"))
    assert audit.completions is True
    assert with_completions([audit], default=False)[0].completions is True


def test_completions_default_off_and_the_setting_turns_them_on() -> None:
    assert load_settings({}).completions is False
    assert load_settings({"CONVEYOR_COMPLETIONS": "true"}).completions is True
    with pytest.raises(SettingError, match="CONVEYOR_COMPLETIONS"):
        load_settings({"CONVEYOR_COMPLETIONS": "sometimes"})


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
        (HEAD.replace("name = 'a'", "name = 'unrouted'"), "name other than"),
        (HEAD + 'deduplicate = "no"', "(a).deduplicate as true or false"),
        (HEAD + "completions = 0", "(a).completions as true or false"),
        (GOOD + GOOD, "repeated: audit, defaults"),
        ("[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = '.x:y'", "importable"),
        ('[[subscriptions]]\nname = "s\\n"\nevents = ["a"]', "subscriptions[0].name"),
        (HEAD.replace("['a']", "['" + "é" * 200 + "']"), "(a).events"),
        (HEAD + 'timeout = "soon"', "(a).timeout"),
        (HEAD + "[subscriptions.retry]\nin_process = 0", "(a).retry.in_process"),
        (HEAD + '[subscriptions.retry]\ndelays = ["1s", "-2s"]', "(a).retry.delays[1]"),
        (HEAD + '[subscriptions.retry]\ndelays = ["30d"]', "(a).retry.delays[0]"),
        (HEAD + "[subscriptions.retry]\nforever = true", "unknown: ['forever']"),
        (HEAD + '[subscriptions.options]\nurl = "x"', "options only with a built-in"),
        (HOOK + '[subscriptions.options]\nurl = "ftp://x"', "(hook).options.url as an http"),
        (HOOK, "(hook).options table"),
        ("subscriptions = 3", "[[subscriptions]]"),
        ("not toml at all [", "readable TOML"),
    ],
)
def test_each_mistake_names_the_setting_and_place(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(SettingError) as raised:
        load_subscriptions(write(tmp_path, text))
    assert raised.value.name == "CONVEYOR_CONFIG"
    assert fragment in str(raised.value)
