"""Standard Webhooks signatures for the webhook handler's requests.

Each request carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per secret, separated by spaces, so a
receiver that knows either the old or the new secret of a rotation accepts it. The signing is
the `standardwebhooks` package's own, so receivers verifying with it agree by construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook as StandardWebhook

from consumers.event import Event

__all__ = ["WebhookSigner", "message_id"]

MAX_SECRETS = 10
_SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def message_id(event: Event) -> str:
    """The `webhook-id` of an event: the same on every retry and replay of it, so receivers can
    deduplicate; derived from `source` and `id`, which together identify a CloudEvent."""
    digest = hashlib.sha256(f"{event.source}\x00{event.id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


class WebhookSigner:
    """Signs with every secret of one subscription; holds no secret in its repr."""

    __slots__ = ("_keys",)

    def __init__(self, keys: tuple[StandardWebhook, ...]) -> None:
        self._keys = keys

    def __repr__(self) -> str:
        return f"WebhookSigner({len(self._keys)} secret(s))"

    @classmethod
    def from_setting(cls, variable: str, value: str | None) -> WebhookSigner:
        """The signer for `secret_env = variable`, whose value is one secret or several,
        comma-separated (`whsec_<base64>`, as Standard Webhooks issues them, or any other
        string, whose UTF-8 bytes are then the key). Raises ValueError naming the variable,
        never its value."""
        if not value or not value.strip():
            raise ValueError(f"options.secret_env: the environment variable {variable} is not set")
        secrets = [part.strip() for part in value.split(",") if part.strip()]
        if len(secrets) > MAX_SECRETS:
            raise ValueError(
                f"options.secret_env: {variable} holds more than {MAX_SECRETS} secrets"
            )
        keys = []
        for secret in secrets:
            try:
                key = (
                    StandardWebhook(secret)
                    if secret.startswith(_SECRET_PREFIX)
                    else StandardWebhook(secret.encode())
                )
            except Exception:  # noqa: BLE001 - the library's errors name no secret; neither do we
                raise ValueError(
                    f"options.secret_env: {variable} holds a secret that is not valid base64 "
                    f"after '{_SECRET_PREFIX}'"
                ) from None
            keys.append(key)
        return cls(tuple(keys))

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> Mapping[str, str]:
        moment = datetime.fromtimestamp(timestamp, UTC)
        signatures = " ".join(key.sign(msg_id, moment, body) for key in self._keys)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures,
        }
