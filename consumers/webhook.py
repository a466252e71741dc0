"""The built-in webhook handler: each event delivered as a CloudEvents HTTP request, binary mode.

2xx is success; 408, 429 and 5xx are retryable (their Retry-After is passed on as a hint);
`410 Gone` dead-letters at once with reason `endpoint-gone`; any other status is permanent, 3xx
included: redirects are not followed, because aiohttp would turn the POST into a bodiless GET
and a 200 to that would ack an event never delivered. Network errors and the request timeout
are retryable. The first bytes of a failed request's response body go with the failure into
the dead-letter headers.

With `secret_env`, each request is signed as Standard Webhooks says (consumers.webhook_signing).
Each endpoint has a circuit breaker (consumers.circuit): while it is open, events go to the
retry ladder without a request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from consumers.circuit import CircuitBreaker, CircuitView
from consumers.errors import PermanentError, RetryableError
from consumers.event import Event
from consumers.retry import IN_PROCESS_MAX_WAIT_SECONDS
from consumers.webhook_signing import WebhookSigner, message_id
from producers.event import format_time

__all__ = ["EndpointGoneError", "Webhook", "WebhookOptions"]

_OPTIONS = frozenset(
    {"url", "timeout", "headers", "secret_env", "circuit_failures", "circuit_cooldown"}
)
_GONE = 410
MAX_BODY_KEPT = 1000  # bytes of a failed request's response body kept with the failure
MAX_CIRCUIT_FAILURES = 1000
_RETRYABLE_STATUSES = frozenset({408, 429})
_BREAKS_HEADER = re.compile(r"[\r\n\x00]")
_SERVER_ERROR = 500
# Characters the CloudEvents HTTP binding lets through unencoded in a header value.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


class EndpointGoneError(PermanentError):
    """The endpoint answered 410 Gone: it will not take this event, now or later."""

    reason = "endpoint-gone"


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    url: str
    timeout: float = 10.0
    headers: Mapping[str, str] | None = None
    # Signing keys from the variable `secret_env` names; never in repr, logs or the admin API.
    signer: WebhookSigner | None = field(default=None, repr=False)
    secret_env: str | None = None
    circuit_failures: int = 5
    circuit_cooldown: float = 30.0

    @classmethod
    def parse(
        cls,
        options: Mapping[str, Any],
        parse_duration: Callable[[str], float],
        environ: Mapping[str, str] | None = None,
    ) -> WebhookOptions:
        """Validate `[subscriptions.options]`; raise ValueError saying what is wrong.

        `environ` is the process environment the entry point read, for `secret_env`."""
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ValueError(f"options among {', '.join(sorted(_OPTIONS))}; unknown: {unknown}")
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
        secret_env = options.get("secret_env")
        signer = None
        if secret_env is not None:
            if not isinstance(secret_env, str) or not secret_env:
                raise ValueError("options.secret_env as the name of an environment variable")
            signer = WebhookSigner.from_setting(secret_env, (environ or {}).get(secret_env))
        failures = options.get("circuit_failures", 5)
        if (
            not isinstance(failures, int)
            or isinstance(failures, bool)
            or not 1 <= failures <= MAX_CIRCUIT_FAILURES
        ):
            raise ValueError(
                f"options.circuit_failures as an integer from 1 to {MAX_CIRCUIT_FAILURES}"
            )
        cooldown = _positive_duration(
            options.get("circuit_cooldown", "30s"), parse_duration, "options.circuit_cooldown"
        )
        return cls(
            url=url,
            timeout=seconds,
            headers=headers,
            signer=signer,
            secret_env=secret_env,
            circuit_failures=failures,
            circuit_cooldown=cooldown,
        )


def _positive_duration(value: Any, parse_duration: Callable[[str], float], name: str) -> float:
    try:
        seconds = parse_duration(str(value))
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ValueError(f"{name} as a duration above zero, such as 30s")
    return seconds


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
    """POSTs each event to `options.url`; one connection pool and one circuit per subscription."""

    def __init__(
        self, options: WebhookOptions, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options
        self.circuit = CircuitBreaker(
            failures=options.circuit_failures, cooldown=options.circuit_cooldown, clock=clock
        )
        self._session: aiohttp.ClientSession | None = None

    def circuit_view(self) -> CircuitView:
        return self.circuit.view()

    async def __call__(self, event: Event) -> None:
        wait = self.circuit.allow()
        if wait is not None:
            # Past the in-process cap, so the attempt goes to the ladder's next tier at once.
            raise RetryableError(
                f"webhook circuit open for {self.options.url}: no request sent",
                retry_after=max(wait, IN_PROCESS_MAX_WAIT_SECONDS + 1),
            )
        try:
            await self._post(event)
        except (RetryableError, EndpointGoneError):
            self.circuit.failed()
            raise
        except PermanentError:
            self.circuit.succeeded()  # it answered: the endpoint is up, the event is at fault
            raise
        except BaseException:
            self.circuit.abandoned()
            raise
        self.circuit.succeeded()

    async def _post(self, event: Event) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        body = event.raw_data
        headers = {**_ce_headers(event), **dict(self.options.headers or {})}
        if self.options.signer is not None:
            headers |= self.options.signer.headers(message_id(event), int(time.time()), body)
        try:
            async with self._session.post(
                self.options.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
                allow_redirects=False,
                # Without a datacontenttype, send no Content-Type rather than aiohttp's default.
                skip_auto_headers=() if "Content-Type" in headers else ("Content-Type",),
            ) as response:
                status = response.status
                retry_after_header = response.headers.get("Retry-After")
                answer = b"" if 200 <= status < 300 else await _first_bytes(response)  # noqa: PLR2004 - the 2xx range
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RetryableError(f"webhook unreachable: {type(error).__name__}: {error}") from None
        if 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
            return
        detail = answer.decode("utf-8", errors="replace") or None
        if status == _GONE:
            raise EndpointGoneError(f"webhook answered {status}", detail=detail)
        if status in _RETRYABLE_STATUSES or status >= _SERVER_ERROR:
            retry_after = _retry_after(retry_after_header)
            raise RetryableError(
                f"webhook answered {status}", retry_after=retry_after, detail=detail
            )
        raise PermanentError(f"webhook answered {status}", detail=detail)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _first_bytes(response: aiohttp.ClientResponse) -> bytes:
    """Up to MAX_BODY_KEPT bytes of the body; a body that does not arrive is left unread."""
    kept = b""
    try:
        while len(kept) < MAX_BODY_KEPT:
            chunk = await response.content.read(MAX_BODY_KEPT - len(kept))
            if not chunk:
                break
            kept += chunk
    except (aiohttp.ClientError, TimeoutError):
        pass  # what arrived is kept; the failure is the status, not the body
    return kept
