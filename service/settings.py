"""Settings: one frozen object, built once from the environment at the entry point. Each field
declares its CONVEYOR_* variable; `conveyor serve --help` and the table in docs/settings.md
follow them."""

from __future__ import annotations

import enum
import importlib.util
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from service import settings_reader
from service.broker.addresses import build_tls_context, redact_url, redact_urls, split_broker_urls
from service.http.admission import request_bytes_bound
from service.settings_reader import (
    LOG_LEVELS,
    MIN_ADMIN_TOKEN_LENGTH,
    NAMESPACE_PATTERN,
    PREFIX,
    DeclaredSetting,
    SettingError,
    choice,
    declared,
    duration,
    flag,
    integer,
    optional,
    parse_duration,
    readable_file,
    setting,
    toml_file,
)

__all__ = [
    "DECLARED_SETTINGS",
    "LOG_LEVELS",
    "MIN_ADMIN_TOKEN_LENGTH",
    "NAMESPACE_PATTERN",
    "PREFIX",
    "DeclaredSetting",
    "EventLoop",
    "LogFormat",
    "Role",
    "SettingError",
    "Settings",
    "load_settings",
    "parse_duration",
    "redact_url",
]

MAX_WORKERS = 64


class Role(enum.StrEnum):
    """Which halves of the pipeline this process runs."""

    ALL = "all"
    INGRESS = "ingress"
    WORKER = "worker"

    @property
    def runs_ingress(self) -> bool:
        return self in (Role.ALL, Role.INGRESS)

    @property
    def runs_workers(self) -> bool:
        return self in (Role.ALL, Role.WORKER)


class EventLoop(enum.StrEnum):
    """Which event loop runs the process.

    uvloop is opt-in: it has not proved faster than asyncio's loop here (docs/performance.md).
    """

    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, each declared once here: its variable (CONVEYOR_ + name), parser, default as
    a user writes it, help text, and whether it is secret (kept out of repr and errors). The help
    output and the settings table (docs/settings.md) come from these declarations."""

    amqp_url: str = setting(
        "AMQP_URL",
        settings_reader.amqp_url,
        "amqp://guest:guest@localhost:5672/",
        "RabbitMQ URL (amqp:// or amqps://); several nodes: comma-separated URLs, or "
        "amqp://u:p@h1,h2:5673,h3/vhost",
        secret=True,
    )
    # A service in a container listens on every interface.
    http_host: str = setting(
        "HTTP_HOST",
        settings_reader.text,
        "0.0.0.0",  # noqa: S104 - see above
        "address the HTTP ingress listens on",
    )
    http_port: int = setting(
        "HTTP_PORT", integer(low=0, high=65535), "8080", "port of the HTTP ingress, 0-65535"
    )
    config_path: Path | None = optional(
        "CONFIG", toml_file, None, "none", "path of a TOML file with [[subscriptions]]"
    )
    namespace: str = setting(
        "NAMESPACE",
        settings_reader.namespace,
        "conveyor",
        "prefix of every exchange and queue: [a-z0-9][a-z0-9_-]*",
    )
    role: Role = setting("ROLE", choice(Role), "all", "all | ingress | worker")
    log_format: LogFormat = setting("LOG_FORMAT", choice(LogFormat), "json", "json | console")
    log_level: str = setting(
        "LOG_LEVEL", settings_reader.log_level, "info", "debug | info | warning | error | critical"
    )
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", integer(low=1), "1048576", "largest accepted HTTP body in bytes"
    )
    max_batch_events: int = setting(
        "MAX_BATCH_EVENTS", integer(low=1), "1000", "most events in one batch request"
    )
    publish_timeout: float = setting(
        "PUBLISH_TIMEOUT", duration(), "5s", "longest wait for RabbitMQ's confirm before a 503"
    )
    shutdown_timeout: float = setting(
        "SHUTDOWN_TIMEOUT", duration(), "30s", "time running handlers get to finish on SIGTERM"
    )
    drain_delay: float = setting(
        "DRAIN_DELAY",
        duration(allow_zero=True),
        "0s",
        "time /readyz answers 503 before the listener closes",
    )
    api_keys: frozenset[str] = optional(
        "API_KEYS",
        settings_reader.api_keys,
        frozenset(),
        "none",
        "comma-separated keys; when set, ingest needs a Bearer key",
        secret=True,
    )
    store_url: str = setting(
        "STORE_URL",
        settings_reader.store_url,
        "sqlite:///./var/conveyor.db",
        "sqlite:///path or postgresql://...",
        secret=True,
    )
    store_timeout: float = setting(
        "STORE_TIMEOUT", duration(), "2s", "longest wait for the store before ingest answers 503"
    )
    idempotency_ttl: float = setting(
        "IDEMPOTENCY_TTL",
        duration(),
        "24h",
        "how long a repeated request or event id is recognised",
    )
    status_ttl: float = setting(
        "STATUS_TTL", duration(), "7d", "how long GET /v1/events/{id} knows an event's status"
    )
    max_delay: float = setting(
        "MAX_DELAY",
        duration(allow_zero=True),
        "365d",
        "longest delay of an event (deliverat, Conveyor-Delay); 0 turns delayed delivery off",
    )
    # (name it is logged under, token) pairs; none: the admin API is off
    admin_tokens: tuple[tuple[str, str], ...] = optional(
        "ADMIN_TOKEN",
        settings_reader.admin_tokens,
        (),
        "none",
        "token, or name:token,... for /v1/admin; unset turns it off",
        secret=True,
    )
    # Outcome events are opt-in: the status API answers without them.
    completions: bool = setting(
        "COMPLETIONS",
        flag,
        "0",
        "1: every subscription that does not set `completions` publishes its outcomes to"
        " {ns}.results",
    )
    otel: bool = setting(
        "OTEL",
        flag,
        "0",
        "1: OpenTelemetry spans over OTLP (OTEL_* variables configure the export)",
    )
    # RabbitMQ's heartbeat timeout: two missed heartbeats.
    amqp_heartbeat: float = setting(
        "AMQP_HEARTBEAT", duration(), "15s", "a broker link silent this long is cut and reconnected"
    )
    # Past it, 503 before the body is read: memory stays bounded.
    max_concurrent_requests: int = setting(
        "MAX_CONCURRENT_REQUESTS",
        integer(low=1),
        "256",
        "ingest requests at once; past it, 503 overloaded",
    )
    # What ingest requests in flight may reserve: see service.http.admission.
    max_ingest_bytes: int = setting(
        "MAX_INGEST_BYTES",
        integer(low=1),
        "268435456",
        "bytes ingest requests in flight may hold (bodies, parsed events, frames);"
        " past it, 503 overloaded",
    )
    loop_lag_warning: float = setting(
        "LOOP_LAG_WARNING",
        duration(),
        "500ms",
        "a stall of the event loop this long logs the handler running",
    )
    # Processes serving one port (SO_REUSEPORT) under a supervisor: ingest across more cores.
    workers: int = setting(
        "WORKERS",
        integer(low=1, high=MAX_WORKERS),
        "1",
        "processes sharing the HTTP port (SO_REUSEPORT); --workers N",
    )
    event_loop: EventLoop = setting(
        "EVENT_LOOP",
        choice(EventLoop),
        "asyncio",
        "asyncio | uvloop (the uvloop extra; see the README)",
    )
    # aiohttp closes a slow head and an idle keep-alive connection on one timer. Above the 60 s
    # idle timeout of common load balancers, so they never reuse a connection conveyor closed.
    http_read_timeout: float = setting(
        "HTTP_READ_TIMEOUT",
        duration(),
        "75s",
        "longest wait for a request head (then the connection closes) or body (then 408);"
        " also the idle keep-alive time",
    )
    amqp_failover_after: float = setting(
        "AMQP_FAILOVER_AFTER",
        duration(),
        "3s",
        "several nodes: a link down this long moves to the next",
    )
    # TLS for amqps:// addresses (none set: aiormq's defaults and the URL's own query options).
    amqp_ca_file: Path | None = optional(
        "AMQP_CA_FILE",
        readable_file,
        None,
        "system CAs",
        "amqps://: PEM file of the CA(s) to trust",
    )
    amqp_cert_file: Path | None = optional(
        "AMQP_CERT_FILE", readable_file, None, "none", "amqps://: PEM client certificate (chain)"
    )
    amqp_key_file: Path | None = optional(
        "AMQP_KEY_FILE",
        readable_file,
        None,
        "in the cert file",
        "amqps://: PEM key of the certificate",
    )
    # The archive: a stream of every event published to {ns}.events (docs/archive.md).
    archive: float | None = optional(
        "ARCHIVE",
        duration(),
        None,
        "none",
        "keep every event this long in the stream {ns}.archive (e.g. 7d); unset: no archive",
    )
    archive_max_bytes: int = setting(
        "ARCHIVE_MAX_BYTES",
        integer(low=1),
        "10000000000",
        "the archive's size bound in bytes: past it the oldest segments go",
    )
    # Retention removes whole segments: see docs/archive.md for the choice of size.
    archive_segment_bytes: int = setting(
        "ARCHIVE_SEGMENT_BYTES",
        integer(low=1),
        "100000000",
        "size of one archive segment file, the unit retention removes",
    )
    archive_read_idle: float = setting(
        "ARCHIVE_READ_IDLE",
        duration(),
        "2s",
        "an archive read that waits this long for the next event takes the stream's end as reached",
    )
    amqp_verify_hostname: bool = setting(
        "AMQP_VERIFY_HOSTNAME", flag, "1", "amqps://: 0 skips the name check (not the chain)"
    )

    @property
    def amqp_addresses(self) -> tuple[str, ...]:
        """Each broker node's URL (CONVEYOR_AMQP_URL may list several; load_settings checked it)."""
        return split_broker_urls(self.amqp_url)

    @property
    def amqp_url_redacted(self) -> str:
        return redact_urls(self.amqp_addresses)

    def amqp_tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for amqps:// addresses, or None when no TLS setting is given."""
        if self.amqp_ca_file is None and self.amqp_cert_file is None and self.amqp_verify_hostname:
            return None
        return build_tls_context(
            ca_file=self.amqp_ca_file,
            cert_file=self.amqp_cert_file,
            key_file=self.amqp_key_file,
            verify_hostname=self.amqp_verify_hostname,
        )


_DECLARED_BY_FIELD = declared(fields(Settings))
DECLARED_SETTINGS: tuple[DeclaredSetting, ...] = tuple(_DECLARED_BY_FIELD.values())


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from CONVEYOR_* variables; raise SettingError naming the first bad one."""
    # Any: each declaration's parser returns its own field's type (they are declared together).
    given: dict[str, Any] = {
        name: value
        for name, declaration in _DECLARED_BY_FIELD.items()
        if (value := declaration.read(environ)) is not None
    }
    settings = Settings(**given)
    if settings.workers > 1 and settings.http_port == 0:
        # Each process would listen on a random port of its own instead of sharing one.
        raise SettingError(
            PREFIX + "WORKERS", "1 when CONVEYOR_HTTP_PORT is 0", str(settings.workers)
        )
    if settings.event_loop is EventLoop.UVLOOP and importlib.util.find_spec("uvloop") is None:
        raise SettingError(
            PREFIX + "EVENT_LOOP", "asyncio: uvloop is not installed (the uvloop extra)"
        )
    _check_tls(settings)
    _check_ingest_bytes(settings)
    return settings


def _check_ingest_bytes(settings: Settings) -> None:
    """The byte budget holds at least one request of the largest size, or none could ever pass."""
    needed = request_bytes_bound(settings.max_body_bytes, settings.max_batch_events)
    if settings.max_ingest_bytes < needed:
        raise SettingError(
            PREFIX + "MAX_INGEST_BYTES",
            f"at least {needed}, what one request of CONVEYOR_MAX_BODY_BYTES with "
            "CONVEYOR_MAX_BATCH_EVENTS events may reserve",
            str(settings.max_ingest_bytes),
        )


def _check_tls(settings: Settings) -> None:
    """TLS settings only with an amqps:// address, and files that make a working context."""
    given = [
        name
        for name, value in (
            ("AMQP_CA_FILE", settings.amqp_ca_file),
            ("AMQP_CERT_FILE", settings.amqp_cert_file),
            ("AMQP_KEY_FILE", settings.amqp_key_file),
        )
        if value is not None
    ]
    if not settings.amqp_verify_hostname:
        given.append("AMQP_VERIFY_HOSTNAME")
    if not given:
        return
    if not any(url.startswith("amqps://") for url in settings.amqp_addresses):
        raise SettingError(PREFIX + given[0], "to be set only with an amqps:// CONVEYOR_AMQP_URL")
    if settings.amqp_key_file is not None and settings.amqp_cert_file is None:
        raise SettingError(PREFIX + "AMQP_KEY_FILE", "to come with CONVEYOR_AMQP_CERT_FILE")
    try:
        settings.amqp_tls_context()
    except (ssl.SSLError, OSError) as error:
        # Which file is wrong: the CA alone, else the certificate and key pair.
        culprit = "AMQP_CA_FILE"
        if settings.amqp_cert_file is not None and _ca_loads(settings.amqp_ca_file):
            culprit = "AMQP_CERT_FILE"
        raise SettingError(
            PREFIX + culprit,
            "PEM files that load (a CA certificate; a client certificate and its key)",
            f"{type(error).__name__}: {error}",
        ) from None


def _ca_loads(ca_file: Path | None) -> bool:
    try:
        ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (ssl.SSLError, OSError):
        return False
    return True
