"""The built-in webhook handler: each event delivered as a CloudEvents HTTP request, binary mode.

2xx is success; 408, 429 and 5xx are retryable (their Retry-After is passed on as a hint);
any other status is permanent, 3xx included: redirects are not followed, because aiohttp would
turn the POST into a bodiless GET and a 200 to that would ack an event never delivered.
Network errors and the request timeout are retryable.
"""

from __future__ import annotations

import re
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
from producers.event import format_time

__all__ = ["Webhook", "WebhookOptions"]

_RETRYABLE_STATUSES = frozenset({408, 429})
_BREAKS_HEADER = re.compile(r"[\r\n\x00]")
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
            seconds = 0.0
        if seconds <= 0:
            raise ValueError("options.timeout as a duration above zero, such as 10s")
        headers = options.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and not _BREAKS_HEADER.search(k + v)
            for k, v in headers.items()
        ):
            raise ValueError("options.headers as a table of single-line strings")
        return cls(url=url, timeout=seconds, headers=headers)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when unusable."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdecimal():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are GMT
        moment = moment.replace(tzinfo=UTC)
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
                allow_redirects=False,
                # Without a datacontenttype, send no Content-Type rather than aiohttp's default.
                skip_auto_headers=() if "Content-Type" in headers else ("Content-Type",),
            ) as response:
                status = response.status
                retry_after_header = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RetryableError(f"webhook unreachable: {type(error).__name__}: {error}") from None
        if 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
            return
        if status in _RETRYABLE_STATUSES or status >= _SERVER_ERROR:
            retry_after = _retry_after(retry_after_header)
            raise RetryableError(f"webhook answered {status}", retry_after=retry_after)
        raise PermanentError(f"webhook answered {status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
