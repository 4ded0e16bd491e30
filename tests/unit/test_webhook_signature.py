"""Webhook signatures: what a receiver accepts and what it must refuse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.webhook_signature import (
    IDEMPOTENCY_HEADER,
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
KEY = "at_risk:c-1:o1"


def request(key: str = KEY) -> dict[str, str]:
    return {**signature_headers(SECRET, TS, BODY, key), IDEMPOTENCY_HEADER: key}


def test_pinned_signatures() -> None:
    # printf '1772366400\nat_risk:c-1:o1\n{"kind":"at_risk"}' | openssl dgst -sha256 -hmac topsecret
    assert sign(SECRET, TS, BODY, KEY) == (
        "v2=06b5f40f4cc4277c36f306bad0b751eeb955307d3b12df06ff0eb1ab76e37bc8"
    )
    # printf '1772366400.{"kind":"at_risk"}' | openssl dgst -sha256 -hmac topsecret
    assert sign(SECRET, TS, BODY, scheme="v1") == (
        "v1=43579239ce3536b1a3784e2ebefa7c7f4710bc921063750359d3779f0db1cfd7"
    )
    assert sign(SECRET.encode(), TS, BODY, KEY) == sign(SECRET, TS, BODY, KEY)


def test_v2_needs_the_key_as_a_header_can_carry_it() -> None:
    for key in (None, "a\nb", "é"):
        with pytest.raises(ValueError, match="Idempotency-Key"):
            sign(SECRET, TS, BODY, key)


def test_a_fresh_request_passes() -> None:
    headers = request()
    verify_request(SECRET, headers, BODY, now=TS + 2)
    assert is_valid_request(SECRET, headers, BODY, now=TS - 2)  # clocks a little apart
    # HTTP frameworks hand headers over in any case
    lowered = {k.lower(): v for k, v in headers.items()}
    assert is_valid_request(SECRET, lowered, BODY, now=TS)


def test_the_idempotency_key_is_signed() -> None:
    """A replay within the window cannot pass for a new alert under another key."""
    headers = {**request(), IDEMPOTENCY_HEADER: KEY + "-again"}
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_request(SECRET, headers, BODY, now=TS)
    without = {k: v for k, v in request().items() if k != IDEMPOTENCY_HEADER}
    with pytest.raises(InvalidSignature, match=f"missing {IDEMPOTENCY_HEADER}"):
        verify_request(SECRET, without, BODY, now=TS)


def test_v1_only_when_the_receiver_accepts_it() -> None:
    headers = {**signature_headers(SECRET, TS, BODY, scheme="v1"), IDEMPOTENCY_HEADER: KEY}
    with pytest.raises(InvalidSignature, match="scheme is not v2="):
        verify_request(SECRET, headers, BODY, now=TS)
    verify_request(SECRET, headers, BODY, now=TS, accept_v1=True)
    # a header listing both: the stronger one is checked
    both = {**request(), SIGNATURE_HEADER: "v1=" + "0" * 64 + "," + sign(SECRET, TS, BODY, KEY)}
    verify_request(SECRET, both, BODY, now=TS, accept_v1=True)


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
        ({"idempotency_key": "at_risk:c-2:o1"}, "does not match"),
        ({"secret": "guessed"}, "does not match"),
        ({"signature": "v2=" + "0" * 64}, "does not match"),
        ({"signature": "v0=" + sign(SECRET, TS, BODY, KEY)[3:]}, "scheme is not v2="),
        ({"signature": sign(SECRET, TS, BODY, scheme="v1")}, "scheme is not v2="),
        ({"signature": ""}, "scheme is not v2="),
        ({"signature": "v2=" + "g" * 64}, "scheme is not v2="),
        ({"signature": "v2=١٢٣"}, "scheme is not v2="),
        ({"timestamp": "-1"}, "not Unix seconds"),
        ({"timestamp": "12.5"}, "not Unix seconds"),
        ({"timestamp": "9" * 40}, "not Unix seconds"),
        # digits of other scripts, which int() would take
        ({"timestamp": "١٧٧٢٣٦٦٤٠٠"}, "not Unix seconds"),
        ({"timestamp": "²"}, "not Unix seconds"),
        ({"idempotency_key": "at_risk:é"}, "not printable ASCII"),
        ({"idempotency_key": "\ud800"}, "not printable ASCII"),
    ],
)
def test_altered_replayed_or_forged_requests_fail(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "secret": SECRET,
        "timestamp": str(TS),
        "signature": sign(SECRET, TS, BODY, KEY),
        "body": BODY,
        "idempotency_key": KEY,
        "now": TS,
        **change,
    }
    with pytest.raises(InvalidSignature, match=message):
        verify(**args)  # type: ignore[arg-type]


def test_missing_headers_are_named() -> None:
    headers = request()
    for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER):
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(InvalidSignature, match=f"missing {name}"):
            verify_request(SECRET, partial, BODY, now=TS)
        assert not is_valid_request(SECRET, partial, BODY, now=TS)


def test_signature_hex_case_does_not_matter() -> None:
    signature = sign(SECRET, TS, BODY, KEY)
    verify(SECRET, TS, signature.upper().replace("V2=", "v2="), BODY, KEY, now=TS)


header_text = st.text(max_size=80) | st.sampled_from(["", " ", "0", str(TS), "v2=", "v1="])


@settings(max_examples=300, deadline=None)
@given(timestamp=header_text, signature=header_text, key=header_text, body=st.binary(max_size=64))
def test_any_header_values_fail_cleanly(
    timestamp: str, signature: str, key: str, body: bytes
) -> None:
    """Whatever the headers hold, the answer is a verdict, never another exception."""
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature, IDEMPOTENCY_HEADER: key}
    for accept_v1 in (False, True):
        assert not is_valid_request(SECRET, headers, body, now=TS, accept_v1=accept_v1)
        with pytest.raises(InvalidSignature):
            verify(SECRET, timestamp, signature, body, key, now=TS, accept_v1=accept_v1)


@settings(max_examples=100, deadline=None)
@given(key=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200))
def test_every_key_a_header_can_carry_signs_and_verifies(key: str) -> None:
    headers = {**signature_headers(SECRET, TS, BODY, key), IDEMPOTENCY_HEADER: key}
    assert is_valid_request(SECRET, headers, BODY, now=TS)
