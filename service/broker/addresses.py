"""Broker addresses: several RabbitMQ nodes in one setting, the order they are tried in, and TLS.

CONVEYOR_AMQP_URL takes either comma-separated URLs
(`amqp://u:p@h1:5672/,amqp://u:p@h2:5673/`) or one URL with a comma-separated host list
(`amqp://u:p@h1,h2:5673,h3/vhost`, each host with its own port or the scheme's default; the
credentials, vhost and query apply to every host). aio-pika's robust connection keeps
reconnecting to the one URL it was given, so the choice of node is conveyor's (service.broker.link).
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Sequence
from pathlib import Path

from yarl import URL

__all__ = [
    "AddressRotation",
    "build_tls_context",
    "redact_url",
    "redact_urls",
    "split_broker_urls",
]

_SCHEMES = ("amqp", "amqps")


def redact_url(url: str) -> str:
    """The URL with its password replaced, fit for a log line."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable url>"
    if parsed.password is None:
        return str(parsed)
    return str(parsed.with_password("***"))


def redact_urls(urls: Sequence[str]) -> str:
    return ",".join(redact_url(url) for url in urls)


def split_broker_urls(raw: str) -> tuple[str, ...]:
    """Each broker address in `raw` as a URL of its own; ValueError (never quoting the value,
    which may hold a password) when one is not an amqp:// or amqps:// URL with a host."""
    parts = [part.strip() for part in raw.split(",")]
    if "" in parts:
        raise ValueError("an empty address between commas")
    if all("://" in part for part in parts):
        urls = parts
    elif "://" in parts[0] and not any("://" in part for part in parts[1:]):
        urls = _expand_host_list(raw.strip())
    else:
        raise ValueError("mixes full URLs with bare hosts")
    for url in urls:
        _check(url)
    return tuple(urls)


def _expand_host_list(raw: str) -> list[str]:
    """`amqp://u:p@h1,h2:5673/vhost?q` -> one URL per host, sharing credentials, vhost and query."""
    scheme, _, rest = raw.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "," in tail:
        raise ValueError("mixes full URLs with bare hosts (a host list comes before the path)")
    # The password may hold a '@' only percent-encoded, but be lenient: the last '@' ends it.
    userinfo, at, hosts = authority.rpartition("@")
    return [f"{scheme}://{userinfo}{at}{host.strip()}{tail}" for host in hosts.split(",")]


def _check(url: str) -> None:
    try:
        parsed = URL(url)
    except ValueError:
        raise ValueError("an address that is not a URL") from None
    if parsed.scheme not in _SCHEMES or not parsed.host:
        raise ValueError("an address that is not an amqp:// or amqps:// URL with a host")
    try:
        _ = parsed.port
    except ValueError:
        raise ValueError("an address with a port that is not a number") from None


def build_tls_context(
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    verify_hostname: bool,
) -> ssl.SSLContext:
    """The client side of amqps://: trust `ca_file` (else the system's CAs), present
    `cert_file`/`key_file` when the broker asks for a client certificate.

    Raises ssl.SSLError or OSError when a file is unreadable or not PEM of the right kind.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    # The chain is always verified; only the name check can be turned off (a broker reached by
    # an IP address or an alias its certificate does not list).
    context.check_hostname = verify_hostname
    return context


class AddressRotation:
    """The order broker addresses are tried in: round the list, from a random start per process
    (replicas with the same setting spread over the nodes), moving past an address that failed."""

    def __init__(self, urls: Sequence[str], *, start: int | None = None) -> None:
        if not urls:
            raise ValueError("no broker address")
        self._urls = tuple(urls)
        # Not for security: only spreads processes over the nodes.
        self._cursor = random.randrange(len(urls)) if start is None else start % len(urls)  # noqa: S311

    def __len__(self) -> int:
        return len(self._urls)

    @property
    def current(self) -> str:
        return self._urls[self._cursor]

    def in_turn(self) -> list[str]:
        """Every address once, the current one first."""
        return [self._urls[(self._cursor + i) % len(self._urls)] for i in range(len(self._urls))]

    def settle_on(self, url: str) -> None:
        self._cursor = self._urls.index(url)

    def move_past(self, url: str) -> None:
        """The next round starts after `url` (it failed, or its node went away)."""
        self._cursor = (self._urls.index(url) + 1) % len(self._urls)
