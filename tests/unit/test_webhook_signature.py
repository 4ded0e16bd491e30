"""Webhook signatures: what a receiver accepts and what it must refuse."""

from __future__ import annotations

import pytest

from processors.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidSignature,
    is_valid_request,
    sign,
    signature_headers,
    verify,
    verify_request,
)

SECRET = "topsecret"
BODY = b'{"kind":"at_risk"}'
TS = 1772366400  # 2026-03-01T12:00:00Z


def test_pinned_signature() -> None:
    # printf '1772366400.{"kind":"at_risk"}' | openssl dgst -sha256 -hmac topsecret
    assert sign(SECRET, TS, BODY) == (
        "v1=43579239ce3536b1a3784e2ebefa7c7f4710bc921063750359d3779f0db1cfd7"
    )
    assert sign(SECRET.encode(), TS, BODY) == sign(SECRET, TS, BODY)


def test_a_fresh_request_passes() -> None:
    headers = signature_headers(SECRET, TS, BODY)
    verify_request(SECRET, headers, BODY, now=TS + 2)
    assert is_valid_request(SECRET, headers, BODY, now=TS - 2)  # clocks a little apart
    # HTTP frameworks hand headers over in any case
    lowered = {k.lower(): v for k, v in headers.items()}
    assert is_valid_request(SECRET, lowered, BODY, now=TS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # replay: the same captured request, ten minutes later
        ({"now": TS + 600}, "beyond 300 s"),
        # a timestamp far ahead is refused as well
        ({"now": TS - 600}, "beyond 300 s"),
        # a stricter receiver
        ({"now": TS + 31, "tolerance": 30}, "beyond 30 s"),
        # the body altered in transit
        ({"body": BODY.replace(b"at_risk", b"churned")}, "does not match"),
        ({"body": BODY + b" "}, "does not match"),
        # a fresh timestamp put on an old request: the signature no longer fits
        ({"timestamp": str(TS + 600), "now": TS + 600}, "does not match"),
        ({"secret": "guessed"}, "does not match"),
        ({"signature": "v1=" + "0" * 64}, "does not match"),
        ({"signature": "v0=" + sign(SECRET, TS, BODY)[3:]}, "scheme is not v1="),
        ({"signature": ""}, "scheme is not v1="),
        ({"timestamp": "-1"}, "not Unix seconds"),
        ({"timestamp": "12.5"}, "not Unix seconds"),
        ({"timestamp": "9" * 40}, "not Unix seconds"),
    ],
)
def test_altered_replayed_or_forged_requests_fail(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "secret": SECRET,
        "timestamp": str(TS),
        "signature": sign(SECRET, TS, BODY),
        "body": BODY,
        "now": TS,
        **change,
    }
    with pytest.raises(InvalidSignature, match=message):
        verify(**args)  # type: ignore[arg-type]


def test_missing_headers_are_named() -> None:
    headers = signature_headers(SECRET, TS, BODY)
    for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER):
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(InvalidSignature, match=f"missing {name}"):
            verify_request(SECRET, partial, BODY, now=TS)
        assert not is_valid_request(SECRET, partial, BODY, now=TS)


def test_signature_hex_case_does_not_matter() -> None:
    signature = sign(SECRET, TS, BODY)
    verify(SECRET, TS, signature.upper().replace("V1=", "v1="), BODY, now=TS)
