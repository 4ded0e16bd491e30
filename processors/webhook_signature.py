"""Signing webhook requests, and checking them on the receiving side.

Every webhook request carries two headers::

    X-Retention-Timestamp: 1772366400
    X-Retention-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp (Unix seconds) is part of what is signed, so a receiver that rejects old
timestamps also rejects a captured request sent again later (a replay): the attacker cannot
put a fresh timestamp on it without the secret. Within the tolerance window a receiver drops
repeats by their ``Idempotency-Key``. Stripe and Slack sign their webhooks the same way.

This module needs nothing but the standard library, so a receiver written in Python can
copy or import it::

    from processors.webhook_signature import InvalidSignature, verify_request

    try:
        verify_request(secret, request.headers, raw_body)
    except InvalidSignature as exc:
        return 400, str(exc)
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Retention-Signature"
TIMESTAMP_HEADER = "X-Retention-Timestamp"
#: the scheme tag; a new signing scheme would get a new tag, so receivers can tell them apart
VERSION = "v1"
#: how far a timestamp may be from the receiver's clock, either way
DEFAULT_TOLERANCE_SECONDS = 300.0


class InvalidSignature(ValueError):
    """The request is not from the tracker, was altered, or is too old (a replay)."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signed_payload(timestamp: int, body: bytes) -> bytes:
    """What the HMAC covers: the timestamp in decimal, a dot, and the exact body bytes."""
    return str(timestamp).encode() + b"." + body


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Retention-Signature`` value: ``v1=`` and the hex HMAC-SHA256."""
    digest = hmac.new(_key(secret), signed_payload(timestamp, body), hashlib.sha256).hexdigest()
    return f"{VERSION}={digest}"


def signature_headers(secret: str | bytes, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def _header(headers: Mapping[str, str], name: str) -> str:
    """Header lookup that ignores case, for plain dicts as well as HTTP header maps."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None:
        raise InvalidSignature(f"missing {name} header")
    return value.strip()


def verify(
    secret: str | bytes,
    timestamp: str | int,
    signature: str,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise :class:`InvalidSignature` unless ``signature`` signs ``timestamp`` and ``body``
    under ``secret`` and the timestamp is within ``tolerance`` seconds of ``now``.

    The signature is checked before the age, and compared in constant time, so a forger
    learns nothing from the answer's timing.
    """
    text = str(timestamp).strip()
    if not text.isdigit() or len(text) > 12:
        raise InvalidSignature(f"timestamp {text[:20]!r} is not Unix seconds")
    seconds = int(text)
    scheme, sep, given = signature.strip().partition("=")
    if not sep or scheme != VERSION:
        raise InvalidSignature(f"signature scheme is not {VERSION}=")
    expected = sign(secret, seconds, body).partition("=")[2]
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise InvalidSignature("signature does not match the body and timestamp")
    current = time.time() if now is None else now
    if abs(current - seconds) > tolerance:
        raise InvalidSignature(
            f"timestamp is {current - seconds:+.0f} s from now, beyond {tolerance:g} s"
        )


def verify_request(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """:func:`verify` with the timestamp and signature taken from the request's headers."""
    verify(
        secret,
        _header(headers, TIMESTAMP_HEADER),
        _header(headers, SIGNATURE_HEADER),
        body,
        tolerance=tolerance,
        now=now,
    )


def is_valid_request(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    try:
        verify_request(secret, headers, body, tolerance=tolerance, now=now)
    except InvalidSignature:
        return False
    return True
