"""The delay chain's paths and the ingress's reading of `deliverat` and `Conveyor-Delay`."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers import InvalidEventError, OutgoingEvent, new_event
from producers.delay import DelayChain, level_queue_arguments, levels_for
from producers.topology import Topology
from service.broker.routing import topic_matches
from service.http.deliverat import (
    DELAY_PATTERN,
    Due,
    check_deliverat,
    due_of,
    requested_delay,
)
from service.http.openapi_route import load_document
from service.settings_reader import parse_duration

NOW = 1_800_000_000.0
YEAR = 365 * 86400.0


def walk(chain: DelayChain, routing_key: str) -> int:
    """Follow a message through the chain's bindings as RabbitMQ would: the seconds it waits.

    Each level's exchange must send it exactly one way: into its queue (bit 1, wait 2**L,
    then dead-lettered to the level below) or on to the level below (bit 0, no wait)."""
    waited = 0
    for level in reversed(range(chain.levels)):
        into_queue = topic_matches("*." * level + "1.#", routing_key)
        onwards = topic_matches("*." * level + "0.#", routing_key)
        assert into_queue != onwards, (level, routing_key)
        if into_queue:
            waited += 1 << level
    return waited


@pytest.mark.parametrize("seconds", range(64))
def test_every_delay_takes_the_path_its_bits_choose(seconds: int) -> None:
    chain = DelayChain(Topology("t"), 6)
    assert walk(chain, chain.routing_key(seconds)) == seconds


@given(st.integers(min_value=0, max_value=(1 << 25) - 1))
@settings(max_examples=100, deadline=None)
def test_any_delay_up_to_a_year_waits_exactly_its_seconds(seconds: int) -> None:
    chain = DelayChain(Topology("t"), levels_for(YEAR))
    assert walk(chain, chain.routing_key(seconds)) == seconds


def test_a_path_does_not_depend_on_how_many_levels_there_are() -> None:
    """Raising the maximum adds levels on top; a message on its way keeps its path."""
    small, large = DelayChain(Topology("t"), 4), DelayChain(Topology("t"), 12)
    for seconds in range(16):
        assert walk(large, small.routing_key(seconds) + ".0" * 8) == seconds
        assert walk(small, large.routing_key(seconds)) == seconds


def test_the_number_of_levels_follows_the_longest_delay() -> None:
    assert levels_for(0) == 0
    assert levels_for(1) == 1
    assert levels_for(3600) == 12
    assert levels_for(YEAR) == 25
    assert DelayChain(Topology("t"), levels_for(YEAR)).longest >= YEAR
    with pytest.raises(ValueError, match="does not fit"):
        DelayChain(Topology("t"), 4).routing_key(16)


def test_each_level_waits_its_power_of_two_and_dead_letters_safely_to_the_one_below() -> None:
    chain = DelayChain(Topology("ns"), 3)
    assert level_queue_arguments(chain, 2)["x-message-ttl"] == 4000
    assert level_queue_arguments(chain, 2)["x-dead-letter-exchange"] == "ns.delay.1"
    assert level_queue_arguments(chain, 0)["x-dead-letter-exchange"] == "ns.due"
    for level in range(3):
        arguments = level_queue_arguments(chain, level)
        assert arguments["x-dead-letter-strategy"] == "at-least-once"
        assert arguments["x-overflow"] == "reject-publish"
        assert arguments["x-queue-type"] == "quorum"
    assert chain.entry == "ns.delay.2"


def event(deliverat: str | None = None) -> OutgoingEvent:
    extensions = {} if deliverat is None else {"deliverat": deliverat}
    return new_event("a.b", {}, id="e", source="/s", extensions=extensions)


def test_deliverat_in_the_past_or_absent_means_now() -> None:
    for deliverat in (None, "2020-01-01T00:00:00Z"):
        published, due = due_of(event(deliverat), NOW, None)
        assert due is None
        check_deliverat(published, NOW, YEAR)


def test_deliverat_is_rounded_to_whole_seconds() -> None:
    _, due = due_of(event("2027-01-15T08:00:02.6Z"), NOW, None)
    assert due == Due(1_800_000_002.6, 3)


@pytest.mark.parametrize(
    "deliverat", ["tomorrow", "2027-01-15", "2027-13-01T00:00:00Z", "2027-01-15T08:00:00"]
)
def test_an_unreadable_deliverat_is_refused_naming_it(deliverat: str) -> None:
    with pytest.raises(InvalidEventError) as refused:
        check_deliverat(event(deliverat), NOW, YEAR)
    assert refused.value.attribute == "deliverat"


def test_a_deliverat_past_the_longest_delay_is_refused_naming_it() -> None:
    with pytest.raises(InvalidEventError, match="CONVEYOR_MAX_DELAY") as refused:
        check_deliverat(event("2027-02-15T08:00:00Z"), NOW, 3600)
    assert refused.value.attribute == "deliverat"


def test_conveyor_delay_sets_deliverat_and_wins_over_the_attribute() -> None:
    published, due = due_of(event("2020-01-01T00:00:00Z"), NOW, 90.0)
    assert due == Due(NOW + 90, 90)
    assert published.attributes["deliverat"] == "2027-01-15T08:01:30Z"


def test_conveyor_delay_is_read_as_documented() -> None:
    assert requested_delay(None, YEAR) is None
    assert requested_delay("90s", YEAR) == 90
    assert requested_delay("90", YEAR) == 90
    assert requested_delay("1.5h", YEAR) == 5400
    for refused, longest in (("soon", YEAR), (" 5s", YEAR), ("2h", 3600), ("366d", YEAR)):
        with pytest.raises(InvalidEventError) as error:
            requested_delay(refused, longest)
        assert error.value.attribute == "deliverat"


def test_the_documented_delay_pattern_is_the_one_enforced() -> None:
    parameters = load_document()["paths"]["/v1/events"]["post"]["parameters"]
    (header,) = [parameter for parameter in parameters if parameter["name"] == "Conveyor-Delay"]
    assert header["schema"]["pattern"] == DELAY_PATTERN


@given(st.from_regex(DELAY_PATTERN, fullmatch=True))
@settings(max_examples=100, deadline=None)
def test_every_documented_delay_fits_the_default_maximum(text: str) -> None:
    # from_regex may add a trailing newline that `$` allows; the server's fullmatch does not.
    if re.fullmatch(DELAY_PATTERN, text) is None:
        return
    assert parse_duration(text) <= YEAR
