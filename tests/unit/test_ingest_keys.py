"""Write keys: their form, the Authorization headers that carry them, the digest match."""

from __future__ import annotations

import base64
import hashlib

import pytest

from retention.api_keys import KEY_PREFIX, digest, match, new_key, presented_key


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_new_keys_are_long_random_and_url_safe() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert len(key) == len(KEY_PREFIX) + 43  # 32 bytes in unpadded base64
        assert set(key[len(KEY_PREFIX) :]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_digest_is_sha256_hex() -> None:
    assert digest("rtk_abc") == hashlib.sha256(b"rtk_abc").hexdigest()


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer rtk_abc", "rtk_abc"),
        ("bearer   rtk_abc  ", "rtk_abc"),  # scheme names are case-insensitive
        (basic("rtk_abc"), "rtk_abc"),  # curl -u KEY:
        (basic("rtk_abc", "ignored"), "rtk_abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (basic(""), None),
        ("Basic !!!", None),  # not base64
        ("Basic " + base64.b64encode(b"\xff\xfe:").decode(), None),  # not UTF-8
        ("Token rtk_abc", None),
        ("rtk_abc", None),
    ],
)
def test_presented_key(header: str | None, key: str | None) -> None:
    assert presented_key(header) == key


def test_match_finds_the_one_name_of_a_digest() -> None:
    stored = {"shop": digest("rtk_a"), "app": digest("rtk_b")}
    assert match(digest("rtk_b"), stored) == "app"
    assert match(digest("rtk_c"), stored) is None
    assert match(digest("rtk_a"), {}) is None
