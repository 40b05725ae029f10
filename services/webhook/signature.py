"""GitHub's webhook signature: `X-Hub-Signature-256`, an HMAC-SHA256 of the body's bytes.

Why a module of its own: it is the first check a delivery meets and the one the
tests and benchmarks sign with (testing/webhooks.py); a header that is not
`sha256=` and 64 lowercase hex digits is refused unread, and the comparison is
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re

SIGNATURE_RE = re.compile(r"^sha256=[0-9a-f]{64}$")


def signature(secret: str, body: bytes) -> str:
    """GitHub's `X-Hub-Signature-256` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def well_formed(header: str | None) -> bool:
    """`sha256=` and 64 lowercase hex digits, as GitHub sends it: anything else is refused
    unread."""
    return bool(header) and SIGNATURE_RE.fullmatch(header.strip()) is not None  # type: ignore[union-attr]


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time comparison; a missing header is simply wrong."""
    if not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


def body_hash(body: bytes) -> str:
    """What a replay is recognised by: the signed bytes, whatever delivery id comes with them."""
    return hashlib.sha256(body).hexdigest()
