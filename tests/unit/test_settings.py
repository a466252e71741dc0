"""Settings from the environment: defaults, parsing, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import (
    EventLoop,
    LogFormat,
    Role,
    SettingError,
    load_settings,
    parse_duration,
    redact_url,
)


def test_defaults_match_the_documented_ones() -> None:
    settings = load_settings({})
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080)  # noqa: S104
    assert settings.namespace == "conveyor"
    assert settings.role is Role.ALL
    assert settings.log_format is LogFormat.JSON
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.publish_timeout == 5.0
    assert settings.shutdown_timeout == 30.0
    assert settings.api_keys == frozenset()
    assert settings.config_path is None
    assert settings.idempotency_ttl == 24 * 3600
    assert settings.status_ttl == 7 * 24 * 3600


def test_every_setting_is_read(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("")
    settings = load_settings(
        {
            "CONVEYOR_AMQP_URL": "amqps://u:p@broker:5671/vh",
            "CONVEYOR_HTTP_HOST": "127.0.0.1",
            "CONVEYOR_HTTP_PORT": "9000",
            "CONVEYOR_CONFIG": str(config),
            "CONVEYOR_NAMESPACE": "team-a",
            "CONVEYOR_ROLE": "Worker",
            "CONVEYOR_LOG_FORMAT": "console",
            "CONVEYOR_LOG_LEVEL": "DEBUG",
            "CONVEYOR_MAX_BODY_BYTES": "2048",
            "CONVEYOR_MAX_BATCH_EVENTS": "10",
            "CONVEYOR_PUBLISH_TIMEOUT": "750ms",
            "CONVEYOR_SHUTDOWN_TIMEOUT": "1m",
            "CONVEYOR_DRAIN_DELAY": "0",
            "CONVEYOR_API_KEYS": " a , b,,",
            "CONVEYOR_STATUS_TTL": "2d",
        }
    )
    assert settings.amqp_url == "amqps://u:p@broker:5671/vh"
    assert settings.http_port == 9000
    assert settings.config_path == config
    assert settings.role is Role.WORKER
    assert settings.log_level == "debug"
    assert settings.publish_timeout == 0.75
    assert settings.shutdown_timeout == 60.0
    assert settings.api_keys == frozenset({"a", "b"})
    assert settings.status_ttl == 2 * 86400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONVEYOR_HTTP_PORT", "70000"),
        ("CONVEYOR_HTTP_PORT", "-1"),
        ("CONVEYOR_MAX_BODY_BYTES", "0"),
        ("CONVEYOR_PUBLISH_TIMEOUT", "0s"),
        ("CONVEYOR_PUBLISH_TIMEOUT", "5 parsecs"),
        ("CONVEYOR_ROLE", "manager"),
        ("CONVEYOR_LOG_LEVEL", "loud"),
        ("CONVEYOR_NAMESPACE", "-leading-dash"),
        ("CONVEYOR_AMQP_URL", "redis://localhost"),
        ("CONVEYOR_API_KEYS", ", ,"),
        ("CONVEYOR_STATUS_TTL", "a week"),
        ("CONVEYOR_STATUS_TTL", "0"),
        ("CONVEYOR_ADMIN_TOKEN", "short"),
        ("CONVEYOR_OTEL", "maybe"),
        ("CONVEYOR_ADMIN_TOKEN", "bad name:0123456789abcdef"),
    ],
)
def test_a_bad_value_raises_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings({name: value})
    assert raised.value.name == name
    assert str(raised.value).startswith(f"{name}: expected ")


def test_settings_repr_hides_secrets() -> None:
    settings = load_settings(
        {"CONVEYOR_AMQP_URL": "amqp://u:topsecret@h/", "CONVEYOR_API_KEYS": "key-123"}
    )
    assert "topsecret" not in repr(settings)
    assert "key-123" not in repr(settings)
    assert settings.amqp_url_redacted == "amqp://u:***@h/"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5", 5.0), ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), ("7d", 604800.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_redact_url_without_password_is_unchanged() -> None:
    assert redact_url("amqp://localhost/") == "amqp://localhost/"


def test_admin_tokens_are_named_and_hidden() -> None:
    named = load_settings({"CONVEYOR_ADMIN_TOKEN": "ops:0123456789abcdef, ci:fedcba9876543210"})
    bare = load_settings({"CONVEYOR_ADMIN_TOKEN": "0123456789abcdef"})

    assert named.admin_tokens == (("ops", "0123456789abcdef"), ("ci", "fedcba9876543210"))
    assert bare.admin_tokens == (("admin", "0123456789abcdef"),)
    assert "0123456789abcdef" not in repr(named)
    assert load_settings({}).admin_tokens == ()


def test_otel_is_a_flag() -> None:
    assert load_settings({}).otel is False
    assert load_settings({"CONVEYOR_OTEL": "1"}).otel is True
    assert load_settings({"CONVEYOR_OTEL": "Off"}).otel is False


def test_reliability_and_scaling_settings_are_read() -> None:
    settings = load_settings(
        {
            "CONVEYOR_AMQP_HEARTBEAT": "5s",
            "CONVEYOR_MAX_CONCURRENT_REQUESTS": "64",
            "CONVEYOR_WORKERS": "4",
            "CONVEYOR_EVENT_LOOP": "uvloop",
        }
    )
    assert (settings.amqp_heartbeat, settings.max_concurrent_requests) == (5.0, 64)
    assert (settings.workers, settings.event_loop) == (4, EventLoop.UVLOOP)
    defaults = load_settings({})
    assert (defaults.amqp_heartbeat, defaults.max_concurrent_requests) == (15.0, 256)
    assert (defaults.workers, defaults.event_loop) == (1, EventLoop.ASYNCIO)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CONVEYOR_WORKERS": "0"}, "CONVEYOR_WORKERS"),
        ({"CONVEYOR_WORKERS": "65"}, "CONVEYOR_WORKERS"),
        ({"CONVEYOR_WORKERS": "2", "CONVEYOR_HTTP_PORT": "0"}, "CONVEYOR_WORKERS"),
        ({"CONVEYOR_EVENT_LOOP": "trio"}, "CONVEYOR_EVENT_LOOP"),
        ({"CONVEYOR_MAX_CONCURRENT_REQUESTS": "0"}, "CONVEYOR_MAX_CONCURRENT_REQUESTS"),
        ({"CONVEYOR_AMQP_HEARTBEAT": "0s"}, "CONVEYOR_AMQP_HEARTBEAT"),
    ],
)
def test_scaling_settings_refuse_what_cannot_work(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings(environ)
    assert raised.value.name == named


def test_the_ingest_byte_budget_and_the_loop_lag_warning_are_read() -> None:
    defaults = load_settings({})
    assert (defaults.max_ingest_bytes, defaults.loop_lag_warning) == (256 * 1024 * 1024, 0.5)
    settings = load_settings(
        {"CONVEYOR_MAX_INGEST_BYTES": "67108864", "CONVEYOR_LOOP_LAG_WARNING": "2s"}
    )
    assert (settings.max_ingest_bytes, settings.loop_lag_warning) == (64 * 1024 * 1024, 2.0)


@pytest.mark.parametrize(
    "environ",
    [
        # Smaller than one request of the largest body with the most events may reserve.
        {"CONVEYOR_MAX_INGEST_BYTES": "1048576"},
        {"CONVEYOR_MAX_INGEST_BYTES": "67108864", "CONVEYOR_MAX_BODY_BYTES": "16777216"},
        {"CONVEYOR_MAX_INGEST_BYTES": "many"},
    ],
)
def test_a_byte_budget_no_request_could_fit_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings(environ)
    assert raised.value.name == "CONVEYOR_MAX_INGEST_BYTES"
