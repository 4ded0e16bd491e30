"""API keys of the HTTP server: made here, kept in Redis only as SHA-256 digests.

A write key is 32 random bytes (256 bits, from :mod:`secrets`) shown once when it is
created. Redis holds, per key name, the key's SHA-256 digest and its creation time; the key
itself is stored nowhere. A fast unsalted hash is enough here: the keys are random, not
passwords a person chose, so no dictionary guesses them and a stolen digest cannot be
turned back into a key.

A key carries scopes: ``ingest`` writes events (``/v1/events``, ``/v1/batch``), ``read``
reads customers, segments, metrics and cohorts, ``admin`` erases customers and may do
everything the others may. A key made before scopes existed is an ingest key. Creating and
revoking keys takes Redis access, through ``retention keys``.

The records are kept by :class:`store.ingest_state.IngestState`, in the hash ``keys`` of
:mod:`store.layout`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, cast

from store.ingest_state import IngestState

logger = logging.getLogger(__name__)

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "admin")

#: Every key starts so: a leaked one is recognisable in a log or a secret scanner.
KEY_PREFIX = "rtk_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyNameError(ValueError):
    """A key name that cannot be used, or a name already taken."""


def new_key() -> str:
    """A fresh write key: the prefix and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """The SHA-256 digest of a key, in hex: what Redis keeps instead of the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def presented_key(authorization: str | None) -> str | None:
    """The write key an ``Authorization`` header carries, or None.

    ``Bearer KEY``, or ``Basic`` with the key as user name and an empty password (what
    ``curl -u KEY:`` sends, and what tools that only know basic auth can send).
    """
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    user, _, password = decoded.partition(":")
    # the password is ignored rather than required empty: a key is the whole secret
    del password
    return user or None


def match(candidate: str, digests: dict[str, str]) -> str | None:
    """The name whose digest is ``candidate``'s, compared in constant time.

    Every stored digest is compared, with no early exit, so the response time says nothing
    about which key, or how much of a guess, matched.
    """
    found: str | None = None
    wanted = candidate.encode()
    for name, stored in digests.items():
        if hmac.compare_digest(wanted, stored.encode()):
            found = name
    return found


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    created_at: float
    scopes: frozenset[str] = frozenset({"ingest"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request's key belongs to, and what it may do."""

    name: str
    scopes: frozenset[str]

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _scopes(record: dict[str, object]) -> frozenset[str]:
    """A record's scopes; a record written before scopes existed is an ingest key."""
    raw = record.get("scopes")
    if not isinstance(raw, list):
        return frozenset({"ingest"})
    return frozenset(str(s) for s in raw if s in SCOPES)


class KeyStore:
    """Making, revoking and reading write keys; their records live in ``state``."""

    def __init__(self, state: IngestState) -> None:
        self.state = state

    async def create(self, name: str, scopes: Iterable[str] = ("ingest",)) -> str:
        """Make a key named ``name`` with ``scopes``; returns the key, which is not stored
        anywhere."""
        wanted = sorted(set(scopes))
        unknown = [s for s in wanted if s not in SCOPES]
        if unknown or not wanted:
            raise KeyNameError(f"scopes are some of {', '.join(SCOPES)}; got {wanted}")
        if not NAME_PATTERN.match(name):
            raise KeyNameError(
                f"bad key name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        key = new_key()
        record = {"sha256": digest(key), "created_at": round(time.time(), 3), "scopes": wanted}
        if not await self.state.add_key(name, record):
            raise KeyNameError(f"a key named {name!r} exists already; revoke it first")
        return key

    async def revoke(self, name: str) -> bool:
        """Delete the key named ``name``; whether there was one."""
        return await self.state.remove_key(name)

    async def listing(self) -> list[KeyInfo]:
        records = await self.state.key_records()
        return sorted(
            (
                KeyInfo(name, float(cast(float, r.get("created_at", 0))), _scopes(r))
                for name, r in records.items()
            ),
            key=lambda info: info.name,
        )

    async def digests(self) -> dict[str, tuple[str, frozenset[str]]]:
        """Every key's digest and scopes by name, in one read."""
        return {
            name: (cast(str, r["sha256"]), _scopes(r))
            for name, r in (await self.state.key_records()).items()
        }


class DigestSource(Protocol):
    """Where :class:`KeyCache` reads the keys: :class:`KeyStore` (one ``HGETALL``)."""

    async def digests(self) -> dict[str, tuple[str, frozenset[str]]]: ...


class KeysUnavailable(RuntimeError):
    """The keys cannot be read and none read recently enough are at hand (the server's
    503); ``retry_in`` is how long until the next read will be tried."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"API keys cannot be read; next try in {retry_in:.1f} s")
        self.retry_in = retry_in


class KeyCache:
    """The digests of :class:`KeyStore`, read again once they are ``max_age`` old.

    A revoked key therefore keeps writing for at most ``max_age`` seconds on a server that
    had read it; 0 reads Redis for every request, except that requests arriving while a read
    is under way share it: there is never more than one read at a time.

    When a read fails, the next one is tried ``retry_first`` seconds later, then after twice
    as long each time, up to ``retry_max`` seconds apart; requests in between do not touch
    Redis. Meanwhile the keys of the last good read still let requests in, without waiting
    for those tries, until ``stale_for`` seconds after that read (or ``max_age``, when
    longer); after that, and
    when there was never a good read, :meth:`authenticate` raises :class:`KeysUnavailable`
    until a read succeeds. A revocation made while this server cannot read Redis therefore
    takes effect up to ``stale_for`` seconds late.
    """

    def __init__(
        self,
        store: DigestSource,
        max_age: float,
        *,
        stale_for: float = 60.0,
        retry_first: float = 0.5,
        retry_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_age = max_age
        self.stale_for = max(stale_for, max_age)
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.clock = clock
        self._records: dict[str, tuple[str, frozenset[str]]] = {}
        self._read_at: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._reading: asyncio.Task[None] | None = None

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """Whose key the header presents, with its scopes, or None; :class:`KeysUnavailable`
        when the keys cannot be known."""
        key = presented_key(authorization)
        if key is None:
            return None
        records = await self._current()
        name = match(digest(key), {n: d for n, (d, _) in records.items()})
        return None if name is None else Caller(name, records[name][1])

    async def _current(self) -> dict[str, tuple[str, frozenset[str]]]:
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.max_age:
            return self._records
        if self._reading is None and now >= self._retry_at:
            self._reading = asyncio.create_task(self._read())
        if self._reading is not None and not (self._failures and self._usable(now)):
            # shielded: a request that gives up waiting does not cancel the read it shares.
            # While reads are failing, keys still usable are used without waiting for the
            # next try, which can take as long as Redis takes to refuse.
            await asyncio.shield(self._reading)
        now = self.clock()
        if self._usable(now):
            return self._records
        raise KeysUnavailable(max(0.0, self._retry_at - now))

    def _usable(self, now: float) -> bool:
        return self._read_at is not None and now - self._read_at <= self.stale_for

    async def idle(self) -> None:
        """Return once no read is under way."""
        if self._reading is not None:
            await asyncio.shield(self._reading)

    async def _read(self) -> None:
        try:
            records = await self.store.digests()
        except Exception as exc:
            self._failures += 1
            wait = min(self.retry_max, self.retry_first * 2 ** min(self._failures - 1, 30))
            self._retry_at = self.clock() + wait
            logger.warning(
                "API keys not read",
                extra={"error": repr(exc), "failures": self._failures, "retry_in": wait},
            )
        else:
            self._records, self._read_at = records, self.clock()
            self._failures, self._retry_at = 0, 0.0
        finally:
            self._reading = None
