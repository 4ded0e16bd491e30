"""Signing webhook requests, and checking them on the receiving side.

Every webhook request carries three headers that belong together::

    X-Retention-Timestamp: 1772366400
    Idempotency-Key: at_risk:c-1:2026-03-01
    X-Retention-Signature: v2=<hex HMAC-SHA256(secret, signed content)>

The signed content of scheme ``v2`` is, as bytes: the timestamp header's value (ASCII
digits), a newline (byte 0x0A), the ``Idempotency-Key`` header's value exactly as sent
(printable ASCII: the notifier percent-encodes anything else), a newline, and the exact
body bytes. A header value cannot hold a newline, so no two requests share signed content.

The timestamp (Unix seconds) is signed, so a receiver that rejects old timestamps also
rejects a captured request sent again later (a replay): the attacker cannot put a fresh
timestamp on it without the secret. Within the tolerance window a receiver drops repeats by
their ``Idempotency-Key``, which is signed too, so a replay cannot come with a new key.

Scheme ``v1`` (``HMAC(secret, "<timestamp>." + body)``) leaves the key unsigned. The
notifier sends it only to a subscriber configured with ``signature: v1``, for receivers
not yet updated; :func:`verify` refuses it unless asked to accept it.

This module needs nothing but the standard library, so a receiver written in Python can
copy or import it::

    from processors.webhook_signature import InvalidSignature, verify_request

    try:
        verify_request(secret, request.headers, raw_body)
    except InvalidSignature as exc:
        return 400, str(exc)

Any header value, however malformed, ends in :class:`InvalidSignature` (or ``False`` from
:func:`is_valid_request`), never in another exception.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Literal

SIGNATURE_HEADER = "X-Retention-Signature"
TIMESTAMP_HEADER = "X-Retention-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
Scheme = Literal["v1", "v2"]
#: the scheme the notifier signs with unless a subscriber asks for another; a new signing
#: scheme gets a new tag, so receivers can tell them apart
VERSION: Scheme = "v2"
#: how far a timestamp may be from the receiver's clock, either way
DEFAULT_TOLERANCE_SECONDS = 300.0

#: Unix seconds: ASCII digits only (``str.isdigit`` also takes other scripts' digits)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
#: one signature: its scheme and 64 hex digits
_SIGNATURE = re.compile(r"(v[0-9]+)=([0-9a-fA-F]{64})")
#: what a header value may hold: printable ASCII, as the notifier sends it
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


class InvalidSignature(ValueError):
    """The request is not from the tracker, was altered, or is too old (a replay)."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signed_payload(
    timestamp: int, body: bytes, idempotency_key: str | None = None, scheme: Scheme = VERSION
) -> bytes:
    """What the HMAC covers. ``v2``: the timestamp in decimal, a newline, the
    ``Idempotency-Key`` header's value, a newline, and the exact body bytes. ``v1``: the
    timestamp, a dot, and the body."""
    if scheme == "v1":
        return str(timestamp).encode() + b"." + body
    if idempotency_key is None or not _HEADER_VALUE.fullmatch(idempotency_key):
        raise ValueError("v2 signs the Idempotency-Key header: give its value, printable ASCII")
    return b"%d\n%s\n%s" % (timestamp, idempotency_key.encode("ascii"), body)


def sign(
    secret: str | bytes,
    timestamp: int,
    body: bytes,
    idempotency_key: str | None = None,
    scheme: Scheme = VERSION,
) -> str:
    """The ``X-Retention-Signature`` value: the scheme, ``=``, and the hex HMAC-SHA256."""
    payload = signed_payload(timestamp, body, idempotency_key, scheme)
    return f"{scheme}={hmac.new(_key(secret), payload, hashlib.sha256).hexdigest()}"


def signature_headers(
    secret: str | bytes,
    timestamp: int,
    body: bytes,
    idempotency_key: str | None = None,
    scheme: Scheme = VERSION,
) -> dict[str, str]:
    """The timestamp and signature headers; the caller sends ``idempotency_key`` as the
    ``Idempotency-Key`` header, exactly as given here."""
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body, idempotency_key, scheme),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    """Header lookup that ignores case, for plain dicts as well as HTTP header maps."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == lowered), None)
    if value is None:
        raise InvalidSignature(f"missing {name} header")
    if not isinstance(value, str):
        raise InvalidSignature(f"{name} header is not text")
    return value.strip()


def _given(signature: str, accepted: tuple[Scheme, ...]) -> tuple[Scheme, str]:
    """The strongest accepted signature of a header that may list several
    (``v1=...,v2=...``)."""
    found: dict[str, str] = {}
    for part in str(signature).split(","):
        match = _SIGNATURE.fullmatch(part.strip())
        if match is not None:
            found.setdefault(match.group(1), match.group(2).lower())
    for scheme in sorted(accepted, reverse=True):
        if scheme in found:
            return scheme, found[scheme]
    raise InvalidSignature(f"signature scheme is not {' or '.join(f'{s}=' for s in accepted)}")


def verify(
    secret: str | bytes,
    timestamp: str | int,
    signature: str,
    body: bytes,
    idempotency_key: str | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
    accept_v1: bool = False,
) -> None:
    """Raise :class:`InvalidSignature` unless ``signature`` signs ``timestamp``,
    ``idempotency_key`` and ``body`` under ``secret`` and the timestamp is within
    ``tolerance`` seconds of ``now``. ``accept_v1`` also takes the older scheme, which
    does not sign the key.

    The signature is checked before the age, and compared in constant time, so a forger
    learns nothing from the answer's timing.
    """
    text = str(timestamp).strip()
    if not _TIMESTAMP.fullmatch(text):
        raise InvalidSignature(f"timestamp {text[:20]!r} is not Unix seconds")
    seconds = int(text)
    scheme, given = _given(signature, ("v1", "v2") if accept_v1 else ("v2",))
    if scheme == "v2":
        if idempotency_key is None:
            raise InvalidSignature(f"missing {IDEMPOTENCY_HEADER} header")
        key = str(idempotency_key).strip()
        if not _HEADER_VALUE.fullmatch(key):
            raise InvalidSignature(f"{IDEMPOTENCY_HEADER} is not printable ASCII")
    else:
        key = None
    expected = sign(secret, seconds, body, key, scheme).partition("=")[2]
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise InvalidSignature("signature does not match the body, key and timestamp")
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
    accept_v1: bool = False,
) -> None:
    """:func:`verify` with the timestamp, key and signature taken from the request's
    headers."""
    try:
        key: str | None = _header(headers, IDEMPOTENCY_HEADER)
    except InvalidSignature:
        key = None  # v1 needs none; v2 says it is missing
    verify(
        secret,
        _header(headers, TIMESTAMP_HEADER),
        _header(headers, SIGNATURE_HEADER),
        body,
        key,
        tolerance=tolerance,
        now=now,
        accept_v1=accept_v1,
    )


def is_valid_request(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
    accept_v1: bool = False,
) -> bool:
    try:
        verify_request(secret, headers, body, tolerance=tolerance, now=now, accept_v1=accept_v1)
    except InvalidSignature:
        return False
    return True
