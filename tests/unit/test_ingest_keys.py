"""Write keys: their form, the Authorization headers that carry them, the digest match,
and how the server's cache of them rereads Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from retention.api_keys import (
    KEY_PREFIX,
    KeyCache,
    KeysUnavailable,
    digest,
    match,
    new_key,
    presented_key,
)

KEY = "rtk_shop"
BEARER = f"Bearer {KEY}"


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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Digests:
    """The keys as Redis would give them, with a count of reads and a switch for an outage."""

    def __init__(self) -> None:
        self.reads = 0
        self.down = False

    async def digests(self) -> dict[str, tuple[str, frozenset[str]]]:
        self.reads += 1
        await asyncio.sleep(0)  # a round trip: other requests come in meanwhile
        if self.down:
            raise ConnectionError("Redis is down")
        return {"shop": (digest(KEY), frozenset({"ingest"}))}


async def test_requests_during_a_read_of_the_keys_share_it() -> None:
    source = Digests()
    cache = KeyCache(source, max_age=0)
    callers = await asyncio.gather(*(cache.authenticate(BEARER) for _ in range(50)))
    assert {c.name for c in callers if c is not None} == {"shop"}
    assert source.reads == 1


async def test_reads_back_off_while_redis_is_down_and_the_last_keys_serve_for_a_while() -> None:
    source, clock = Digests(), Clock()
    cache = KeyCache(source, max_age=5, stale_for=60, retry_first=0.5, retry_max=4, clock=clock)
    assert await cache.authenticate(BEARER) is not None
    source.down = True
    # (time, reads so far): a failed read is tried again after 0.5, 1, 2, 4, 4 ... seconds,
    # and requests in between do not touch Redis; the keys read at 0 still let them in
    for now, reads in [(5, 2), (5.4, 2), (5.5, 3), (6.4, 3), (6.5, 4), (8.5, 5), (12.4, 5),
                       (12.5, 6), (16.5, 7), (20.4, 7)]:  # fmt: skip
        clock.now = now
        caller = await cache.authenticate(BEARER)
        await cache.idle()  # the try it started, if any, which the request did not wait for
        assert (caller is not None, source.reads) == (True, reads), now
    # 60 s after the last good read the keys are no longer trusted: 503 until Redis answers
    clock.now = 60.5
    with pytest.raises(KeysUnavailable) as refused:
        await cache.authenticate(BEARER)
    assert 0 < refused.value.retry_in <= 4
    source.down = False
    clock.now += refused.value.retry_in
    assert await cache.authenticate(BEARER) is not None
    # back to normal: the next read is due max_age later, and a failure starts at 0.5 s again
    reads = source.reads
    clock.now += 4.9
    assert await cache.authenticate(BEARER) is not None
    assert source.reads == reads


async def test_no_keys_read_yet_and_redis_down_is_unavailable_not_unauthorized() -> None:
    source = Digests()
    source.down = True
    cache = KeyCache(source, max_age=5)
    results = await asyncio.gather(
        *(cache.authenticate(BEARER) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, KeysUnavailable) for r in results)
    assert source.reads == 1
    # a request without a key needs no read to be refused
    assert await cache.authenticate(None) is None
    assert source.reads == 1


async def test_while_reads_fail_requests_do_not_wait_for_the_next_try() -> None:
    source, clock = Digests(), Clock()
    cache = KeyCache(source, max_age=5, retry_first=0.5, clock=clock)
    await cache.authenticate(BEARER)
    source.down = True
    clock.now = 5
    await cache.authenticate(BEARER)  # the first failure is waited for: 2 reads
    hanging = asyncio.Event()
    slow = source.digests

    async def refusing_slowly() -> dict[str, tuple[str, frozenset[str]]]:
        await hanging.wait()  # Redis that takes its time to refuse
        return await slow()

    source.digests = refusing_slowly  # type: ignore[method-assign]
    clock.now = 6
    caller = await asyncio.wait_for(cache.authenticate(BEARER), 1)
    assert caller is not None and caller.name == "shop"
    hanging.set()
    await cache.idle()
    assert source.reads == 3
