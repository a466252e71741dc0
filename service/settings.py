"""Settings: one frozen object, built once from the environment at the entry point."""

from __future__ import annotations

import enum
import importlib.util
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.broker.addresses import build_tls_context, redact_url, redact_urls, split_broker_urls
from service.http.admission import request_bytes_bound
from service.settings_reader import (
    LOG_LEVELS,
    MIN_ADMIN_TOKEN_LENGTH,
    NAMESPACE_PATTERN,
    PREFIX,
    SettingError,
    parse_duration,
)
from service.settings_reader import Reader as _Reader

__all__ = [
    "LOG_LEVELS",
    "MIN_ADMIN_TOKEN_LENGTH",
    "NAMESPACE_PATTERN",
    "PREFIX",
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

    uvloop is opt-in. It used to leave the link down for good when a broker reset the connection
    during the AMQP handshake (fixed: service.broker.link.HandshakeCutError), and on the 2-core
    benchmark machine it was no faster than asyncio's loop in two later runs (README,
    Performance), after 1.20 x single ingest and 1.11 x consume in an earlier one.
    """

    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


@dataclass(frozen=True, slots=True)
class Settings:
    amqp_url: str = field(default="amqp://guest:guest@localhost:5672/", repr=False)
    # A service in a container listens on every interface.
    http_host: str = "0.0.0.0"  # noqa: S104
    http_port: int = 8080
    config_path: Path | None = None
    namespace: str = "conveyor"
    role: Role = Role.ALL
    log_format: LogFormat = LogFormat.JSON
    log_level: str = "info"
    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 1000
    publish_timeout: float = 5.0
    shutdown_timeout: float = 30.0
    drain_delay: float = 0.0
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    store_url: str = field(default="sqlite:///./var/conveyor.db", repr=False)
    # Longest ingest waits for the store (a claim, its answer's write); past it, 503.
    store_timeout: float = 2.0
    idempotency_ttl: float = 24 * 3600.0
    status_ttl: float = 7 * 24 * 3600.0
    # (name it is logged under, token) pairs; none: the admin API is off
    admin_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    otel: bool = False  # OpenTelemetry spans, exported over OTLP (the `otel` extra)
    # RabbitMQ's heartbeat timeout: a link silent for this long (two missed heartbeats) is dead.
    amqp_heartbeat: float = 15.0
    # Ingest requests handled at once; past it, 503 before the body is read (memory stays bounded).
    max_concurrent_requests: int = 256
    # Bytes ingest requests in flight may reserve (bodies, parsed events, frames): past it, a
    # request waits a moment, then 503 (see service.http.admission).
    max_ingest_bytes: int = 256 * 1024 * 1024
    # The event loop stalled this long (a handler blocking it): a warning naming the handler.
    loop_lag_warning: float = 0.5
    # Processes serving one port (SO_REUSEPORT) under a supervisor: ingest across more cores.
    workers: int = 1
    event_loop: EventLoop = EventLoop.ASYNCIO
    # Longest a request head or body may take to arrive, and how long an idle keep-alive
    # connection stays open (aiohttp closes both on one timer). Above the 60 s idle timeout of
    # common load balancers, so they never reuse a connection conveyor just closed.
    http_read_timeout: float = 75.0
    # With several broker addresses: a link down this long on one node moves to the next.
    amqp_failover_after: float = 3.0
    # TLS for amqps:// addresses (none set: aiormq's defaults and the URL's own query options).
    amqp_ca_file: Path | None = None
    amqp_cert_file: Path | None = None
    amqp_key_file: Path | None = None
    amqp_verify_hostname: bool = True

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


@dataclass(frozen=True, slots=True)
class SettingDoc:
    name: str
    default: str
    help: str


SETTINGS_HELP: tuple[SettingDoc, ...] = (
    SettingDoc(
        "AMQP_URL",
        "amqp://guest:guest@localhost:5672/",
        "RabbitMQ URL (amqp:// or amqps://); several nodes: comma-separated URLs, or "
        "amqp://u:p@h1,h2:5673,h3/vhost",
    ),
    SettingDoc("HTTP_HOST", "0.0.0.0", "address the HTTP ingress listens on"),  # noqa: S104 - documents the default
    SettingDoc("HTTP_PORT", "8080", "port of the HTTP ingress, 0-65535"),
    SettingDoc("CONFIG", "(none)", "path of a TOML file with [[subscriptions]]"),
    SettingDoc("NAMESPACE", "conveyor", "prefix of every exchange and queue: [a-z0-9][a-z0-9_-]*"),
    SettingDoc("ROLE", "all", "all | ingress | worker"),
    SettingDoc("LOG_FORMAT", "json", "json | console"),
    SettingDoc("LOG_LEVEL", "info", "debug | info | warning | error | critical"),
    SettingDoc("MAX_BODY_BYTES", "1048576", "largest accepted HTTP body in bytes"),
    SettingDoc("MAX_BATCH_EVENTS", "1000", "most events in one batch request"),
    SettingDoc("PUBLISH_TIMEOUT", "5s", "longest wait for RabbitMQ's confirm before a 503"),
    SettingDoc("SHUTDOWN_TIMEOUT", "30s", "time running handlers get to finish on SIGTERM"),
    SettingDoc("DRAIN_DELAY", "0s", "time /readyz answers 503 before the listener closes"),
    SettingDoc("API_KEYS", "(none)", "comma-separated keys; when set, ingest needs a Bearer key"),
    SettingDoc("STORE_URL", "sqlite:///./var/conveyor.db", "sqlite:///path or postgresql://..."),
    SettingDoc("STORE_TIMEOUT", "2s", "longest wait for the store before ingest answers 503"),
    SettingDoc("IDEMPOTENCY_TTL", "24h", "how long a repeated request or event id is recognised"),
    SettingDoc("STATUS_TTL", "7d", "how long GET /v1/events/{id} knows an event's status"),
    SettingDoc(
        "OTEL", "0", "1: OpenTelemetry spans over OTLP (OTEL_* variables configure the export)"
    ),
    SettingDoc(
        "ADMIN_TOKEN", "(none)", "token, or name:token,... for /v1/admin; unset turns it off"
    ),
    SettingDoc("WORKERS", "1", "processes sharing the HTTP port (SO_REUSEPORT); --workers N"),
    SettingDoc("EVENT_LOOP", "asyncio", "asyncio | uvloop (the uvloop extra; see the README)"),
    SettingDoc("AMQP_HEARTBEAT", "15s", "a broker link silent this long is cut and reconnected"),
    SettingDoc(
        "MAX_CONCURRENT_REQUESTS", "256", "ingest requests at once; past it, 503 overloaded"
    ),
    SettingDoc(
        "MAX_INGEST_BYTES",
        "268435456",
        "bytes ingest requests in flight may hold (bodies, parsed events, frames);"
        " past it, 503 overloaded",
    ),
    SettingDoc(
        "LOOP_LAG_WARNING", "500ms", "a stall of the event loop this long logs the handler running"
    ),
    SettingDoc(
        "HTTP_READ_TIMEOUT",
        "75s",
        "longest wait for a request head (then the connection closes) or body (then 408);"
        " also the idle keep-alive time",
    ),
    SettingDoc(
        "AMQP_FAILOVER_AFTER", "3s", "several nodes: a link down this long moves to the next"
    ),
    SettingDoc("AMQP_CA_FILE", "(system CAs)", "amqps://: PEM file of the CA(s) to trust"),
    SettingDoc("AMQP_CERT_FILE", "(none)", "amqps://: PEM client certificate (chain)"),
    SettingDoc("AMQP_KEY_FILE", "(in the cert file)", "amqps://: PEM key of the certificate"),
    SettingDoc("AMQP_VERIFY_HOSTNAME", "1", "amqps://: 0 skips the name check (not the chain)"),
)


_DEFAULTS = Settings()


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from CONVEYOR_* variables; raise SettingError naming the first bad one."""
    reader = _Reader(environ)
    settings = Settings(
        amqp_url=reader.amqp_url("AMQP_URL", _DEFAULTS.amqp_url),
        http_host=reader.text("HTTP_HOST", _DEFAULTS.http_host),
        http_port=reader.integer("HTTP_PORT", _DEFAULTS.http_port, low=0, high=65535),
        config_path=reader.path("CONFIG"),
        namespace=reader.namespace("NAMESPACE", _DEFAULTS.namespace),
        role=reader.choice("ROLE", Role, _DEFAULTS.role),
        log_format=reader.choice("LOG_FORMAT", LogFormat, _DEFAULTS.log_format),
        log_level=reader.level("LOG_LEVEL", _DEFAULTS.log_level),
        max_body_bytes=reader.integer("MAX_BODY_BYTES", _DEFAULTS.max_body_bytes, low=1),
        max_batch_events=reader.integer("MAX_BATCH_EVENTS", _DEFAULTS.max_batch_events, low=1),
        publish_timeout=reader.duration("PUBLISH_TIMEOUT", _DEFAULTS.publish_timeout),
        shutdown_timeout=reader.duration("SHUTDOWN_TIMEOUT", _DEFAULTS.shutdown_timeout),
        drain_delay=reader.duration("DRAIN_DELAY", _DEFAULTS.drain_delay, allow_zero=True),
        api_keys=reader.keys("API_KEYS"),
        store_url=reader.store_url("STORE_URL", _DEFAULTS.store_url),
        store_timeout=reader.duration("STORE_TIMEOUT", _DEFAULTS.store_timeout),
        idempotency_ttl=reader.duration("IDEMPOTENCY_TTL", _DEFAULTS.idempotency_ttl),
        status_ttl=reader.duration("STATUS_TTL", _DEFAULTS.status_ttl),
        admin_tokens=reader.admin_tokens("ADMIN_TOKEN"),
        otel=reader.flag("OTEL", default=_DEFAULTS.otel),
        amqp_heartbeat=reader.duration("AMQP_HEARTBEAT", _DEFAULTS.amqp_heartbeat),
        workers=reader.integer("WORKERS", _DEFAULTS.workers, low=1, high=MAX_WORKERS),
        event_loop=reader.choice("EVENT_LOOP", EventLoop, _DEFAULTS.event_loop),
        max_concurrent_requests=reader.integer(
            "MAX_CONCURRENT_REQUESTS", _DEFAULTS.max_concurrent_requests, low=1
        ),
        max_ingest_bytes=reader.integer("MAX_INGEST_BYTES", _DEFAULTS.max_ingest_bytes, low=1),
        loop_lag_warning=reader.duration("LOOP_LAG_WARNING", _DEFAULTS.loop_lag_warning),
        http_read_timeout=reader.duration("HTTP_READ_TIMEOUT", _DEFAULTS.http_read_timeout),
        amqp_failover_after=reader.duration("AMQP_FAILOVER_AFTER", _DEFAULTS.amqp_failover_after),
        amqp_ca_file=reader.readable_file("AMQP_CA_FILE"),
        amqp_cert_file=reader.readable_file("AMQP_CERT_FILE"),
        amqp_key_file=reader.readable_file("AMQP_KEY_FILE"),
        amqp_verify_hostname=reader.flag(
            "AMQP_VERIFY_HOSTNAME", default=_DEFAULTS.amqp_verify_hostname
        ),
    )
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
