"""The webhook endpoint's circuit breaker and request signing, on a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from consumers.circuit import CircuitBreaker, CircuitState
from consumers.event import Event
from consumers.webhook import WebhookOptions
from consumers.webhook_signing import WebhookSigner, message_id
from service.settings import parse_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_it_opens_after_n_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = Clock()
    circuit = CircuitBreaker(failures=3, cooldown=10, clock=clock)
    for _ in range(2):
        assert circuit.allow() is None
        circuit.failed()
    circuit.succeeded()
    for _ in range(2):
        circuit.failed()
    assert circuit.view().state is CircuitState.CLOSED
    circuit.failed()
    assert circuit.view().state is CircuitState.OPEN
    assert circuit.allow() == pytest.approx(10)
    clock.now += 4
    assert circuit.allow() == pytest.approx(6)


def test_after_the_cooldown_one_probe_goes_out_and_its_outcome_decides() -> None:
    clock = Clock()
    circuit = CircuitBreaker(failures=1, cooldown=5, clock=clock)
    circuit.failed()
    clock.now += 5
    assert circuit.view().state is CircuitState.HALF_OPEN
    assert circuit.allow() is None  # the probe
    assert circuit.allow() is not None  # no second request while the probe runs
    circuit.failed()
    assert circuit.view().state is CircuitState.OPEN  # a failed probe: another cool-down
    assert circuit.allow() == pytest.approx(5)
    clock.now += 5
    assert circuit.allow() is None
    circuit.succeeded()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.allow() is None
    assert circuit.allow() is None


def test_an_abandoned_probe_lets_the_next_one_go() -> None:
    clock = Clock()
    circuit = CircuitBreaker(failures=1, cooldown=1, clock=clock)
    circuit.failed()
    clock.now += 1
    assert circuit.allow() is None
    circuit.abandoned()
    assert circuit.allow() is None


def test_signatures_verify_with_either_secret_of_a_rotation() -> None:
    old, new = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "a plain secret"
    signer = WebhookSigner.from_setting("HOOK_SECRET", f"{old}, {new}")
    body = b'{"order": 1}'
    headers = dict(signer.headers("msg_1", 1_700_000_000, body))
    assert headers["webhook-signature"].count("v1,") == 2
    for secret in (old, new.encode()):
        verifier = StandardWebhook(secret)
        # verify checks the timestamp against now; sign what it would expect instead.
        assert verifier.sign("msg_1", _moment(1_700_000_000), body) in headers[
            "webhook-signature"
        ].split(" ")
    assert "MfKQ" not in repr(signer)


def test_a_missing_or_bad_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="HOOK_SECRET is not set"):
        WebhookSigner.from_setting("HOOK_SECRET", None)
    with pytest.raises(ValueError, match="not valid base64") as refused:
        WebhookSigner.from_setting("HOOK_SECRET", "whsec_!!not-base64!!")
    assert "not-base64" not in str(refused.value)


def test_options_name_the_variable_and_bound_the_circuit() -> None:
    options = WebhookOptions.parse(
        {"url": "https://example.com/h", "secret_env": "S", "circuit_failures": 2},
        parse_duration,
        {"S": "s3cret-value"},
    )
    assert options.signer is not None
    assert options.circuit_failures == 2
    assert "s3cret" not in repr(options)
    with pytest.raises(ValueError, match="circuit_failures"):
        WebhookOptions.parse({"url": "https://e.com", "circuit_failures": 0}, parse_duration, {})
    with pytest.raises(ValueError, match="circuit_cooldown"):
        WebhookOptions.parse({"url": "https://e.com", "circuit_cooldown": "0s"}, parse_duration, {})
    with pytest.raises(ValueError, match="environment variable S is not set"):
        WebhookOptions.parse({"url": "https://e.com", "secret_env": "S"}, parse_duration, {})


def test_the_message_id_is_the_same_for_every_copy_of_one_event() -> None:
    first = Event(id="o-1", source="/shop", type="order.placed", specversion="1.0")
    again = Event(id="o-1", source="/shop", type="order.placed", specversion="1.0", attempt=3)
    other = Event(id="o-1", source="/other", type="order.placed", specversion="1.0")
    assert message_id(first) == message_id(again) != message_id(other)


def _moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
