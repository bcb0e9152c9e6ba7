"""Standard Webhooks v1 signatures, made by the specification's reference implementation.

`webhook-signature` carries one `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per active
secret, space-separated: during a rotation the receiver may still hold either secret.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (the specification allows 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signature_headers(msg_id: str, body: bytes, keys: list[str], now: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt. The timestamp is the attempt's
    (receivers refuse old ones), so each retry is signed again; id and body stay the same."""
    if not keys:
        raise ValueError("no secret to sign with")
    now = now or datetime.now(timezone.utc)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Webhook(key).sign(msg_id, now, body) for key in keys),
    }
