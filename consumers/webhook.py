"""The built-in webhook handler: each event delivered as a CloudEvents HTTP request, binary mode.

2xx is success; 408, 429 and 5xx are retryable (their Retry-After is passed on as a hint);
any other status is permanent. Network errors and the request timeout are retryable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from consumers.errors import PermanentError, RetryableError
from consumers.event import Event
from producers import format_time

__all__ = ["Webhook", "WebhookOptions"]

_RETRYABLE_STATUSES = frozenset({408, 429})
_SERVER_ERROR = 500
# Characters the CloudEvents HTTP binding lets through unencoded in a header value.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    url: str
    timeout: float = 10.0
    headers: Mapping[str, str] | None = None

    @classmethod
    def parse(
        cls, options: Mapping[str, Any], parse_duration: Callable[[str], float]
    ) -> WebhookOptions:
        """Validate `[subscriptions.options]`; raise ValueError saying what is wrong."""
        unknown = sorted(set(options) - {"url", "timeout", "headers"})
        if unknown:
            raise ValueError(f"options among url, timeout, headers; unknown: {unknown}")
        url = options.get("url")
        if (
            not isinstance(url, str)
            or URL(url).scheme not in ("http", "https")
            or not URL(url).host
        ):
            raise ValueError("options.url as an http:// or https:// URL")
        timeout = options.get("timeout", "10s")
        try:
            seconds = parse_duration(str(timeout))
        except ValueError:
            raise ValueError("options.timeout as a duration such as 10s") from None
        headers = options.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("options.headers as a table of strings")
        return cls(url=url, timeout=seconds, headers=headers)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _ce_headers(event: Event) -> dict[str, str]:
    attributes = {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "specversion": event.specversion,
        **dict(event.extensions),
    }
    if event.time is not None:
        attributes["time"] = format_time(event.time)
    if event.subject is not None:
        attributes["subject"] = event.subject
    if event.dataschema is not None:
        attributes["dataschema"] = event.dataschema
    headers = {f"ce-{name}": quote(value, safe=_HEADER_SAFE) for name, value in attributes.items()}
    if event.datacontenttype is not None:
        headers["Content-Type"] = event.datacontenttype
    return headers


class Webhook:
    """POSTs each event to `options.url`; one connection pool per subscription."""

    def __init__(self, options: WebhookOptions) -> None:
        self.options = options
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, event: Event) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        headers = {**_ce_headers(event), **dict(self.options.headers or {})}
        try:
            async with self._session.post(
                self.options.url,
                data=event.raw_data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
            ) as response:
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RetryableError(f"webhook unreachable: {type(error).__name__}: {error}") from None
        if 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
            return
        if status in _RETRYABLE_STATUSES or status >= _SERVER_ERROR:
            raise RetryableError(f"webhook answered {status}", retry_after=retry_after)
        raise PermanentError(f"webhook answered {status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
