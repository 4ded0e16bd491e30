"""The HTTP ingest API against the real server, the session broker and Redis.

Every response body is also checked against the OpenAPI document's schema for its status,
so the document cannot drift from what the server says.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from retention import runtime
from retention.api_keys import KeyCache, KeyStore, KeysUnavailable
from retention.config import Settings
from retention.ingest import IngestServer, loads_document
from store.ingest_state import IngestState
from store.store import Store
from streams.topics import Topics, ensure_topics
from tests.integration.conftest import Workers, read_topic, settings_env, wait_until

DOC = loads_document()
_REGISTRY = Registry().with_resource(
    "urn:openapi", Resource.from_contents(DOC, default_specification=DRAFT202012)
)


def check_against_document(path: str, status: int, body: Any) -> None:
    """The body the server sent validates against the document's schema for it."""
    responses = DOC["paths"][path]["post"]["responses"]
    assert str(status) in responses, f"{path}: status {status} is not documented"
    pointer = f"/paths/{path.replace('/', '~1')}/post/responses/{status}"
    schema = {"$ref": f"urn:openapi#{pointer}/content/application~1json/schema"}
    Draft202012Validator(schema, registry=_REGISTRY).validate(body)


def order(n: int, customer: str = "c-1", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"o-{n}",
        "customer_id": customer,
        "ts": time.time() - 3600,
        "type": "order",
        "amount": 10.0,
        **extra,
    }


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session, self.url, self.key = session, url, key

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        sent = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        data = io.BytesIO(raw if raw is not None else json.dumps(body).encode())
        async with self.session.post(self.url + path, data=data, headers=sent) as resp:
            payload = await resp.json(content_type=None)
            check_against_document(path, resp.status, payload)
            return resp.status, payload, resp.headers


ServerFactory = Callable[..., Awaitable[IngestServer]]


@pytest.fixture
async def topics(settings: Settings) -> Topics:
    assert settings.kafka_bootstrap
    topics = Topics.from_settings(settings)
    await ensure_topics(settings.kafka_bootstrap, topics, settings.partitions)
    return topics


@pytest.fixture
async def start_server(settings: Settings, topics: Topics) -> AsyncIterator[ServerFactory]:
    servers: list[IngestServer] = []

    async def start(**overrides: Any) -> IngestServer:
        tuned = settings.model_copy(update={"ingest_key_cache_seconds": 0, **overrides})
        server = IngestServer(tuned, "127.0.0.1", 0)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def key(settings: Settings, redis: Redis) -> str:
    return await KeyStore(IngestState(redis, settings.key_prefix)).create("shop")


@pytest.fixture
async def client(start_server: ServerFactory, key: str) -> AsyncIterator[Client]:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        yield Client(session, server.url, key)


async def test_accepted_events_are_on_their_topics_keyed_by_customer(
    client: Client, settings: Settings, topics: Topics
) -> None:
    status, body, _ = await client.post("/v1/events", order(1, "c-7"))
    assert (status, body["accepted"], body["results"][0]["status"]) == (202, 1, "accepted")
    login = {"event_id": "l-1", "customer_id": "c-8", "ts": time.time(), "type": "login"}
    status, body, _ = await client.post("/v1/batch", {"events": [order(2, "c-7"), login]})
    assert (status, body["accepted"], body["rejected"]) == (202, 2, 0)

    assert settings.kafka_bootstrap
    orders = await read_topic(
        settings.kafka_bootstrap, topics.source("order"), lambda m: len(m) >= 2
    )
    logins = await read_topic(
        settings.kafka_bootstrap, topics.source("login"), lambda m: len(m) >= 1
    )
    assert sorted((m.key, json.loads(m.value)["event_id"]) for m in orders) == [
        (b"c-7", "o-1"),
        (b"c-7", "o-2"),
    ]
    assert [(m.key, json.loads(m.value)["event_id"]) for m in logins] == [(b"c-8", "l-1")]
    # the server's default currency is filled in, as the producer API does
    assert json.loads(orders[0].value)["currency"] == settings.default_currency


async def test_a_partial_batch_lists_each_rejection_by_index(
    client: Client, settings: Settings, topics: Topics
) -> None:
    future = order(3, ts=time.time() + 3 * 86400)
    naive = order(4, ts="2024-03-13T10:21:14")
    events = [order(1), "not an object", future, naive, {"type": "order"}, order(2)]
    status, body, _ = await client.post("/v1/batch", {"events": events})
    assert status == 202
    assert (body["accepted"], body["rejected"]) == (2, 4)
    outcome = [(r["index"], r["status"], r.get("reason")) for r in body["results"]]
    assert outcome == [
        (0, "accepted", None),
        (1, "rejected", "not_an_object"),
        (2, "rejected", "future_timestamp"),
        (3, "rejected", "naive_timestamp"),
        (4, "rejected", "missing_field"),
        (5, "accepted", None),
    ]
    assert body["results"][2]["event_id"] == "o-3"
    assert settings.kafka_bootstrap
    messages = await read_topic(
        settings.kafka_bootstrap, topics.source("order"), lambda m: len(m) >= 2, timeout=5
    )
    assert sorted(json.loads(m.value)["event_id"] for m in messages) == ["o-1", "o-2"]
    # a request of rejected events only is a 422, and sends nothing
    status, body, _ = await client.post("/v1/events", naive)
    assert (status, body["accepted"], body["results"][0]["reason"]) == (422, 0, "naive_timestamp")


async def test_gzip_bodies_and_their_limits(client: Client) -> None:
    gz = {"Content-Encoding": "gzip"}
    batch = gzip.compress(json.dumps({"events": [order(n) for n in range(50)]}).encode())
    status, body, _ = await client.post("/v1/batch", raw=batch, headers=gz)
    assert (status, body["accepted"]) == (202, 50)
    # two members, concatenated: one body
    half = json.dumps(order(99)).encode()
    status, _, _ = await client.post(
        "/v1/events", raw=gzip.compress(half[:10]) + gzip.compress(half[10:]), headers=gz
    )
    assert status == 202
    # 8 MiB of spaces around an event pack into a few KiB: refused once inflated past 1 MiB
    bomb = gzip.compress(b" " * (8 * 1024 * 1024) + json.dumps(order(1)).encode())
    assert len(bomb) < 64 * 1024
    status, body, _ = await client.post("/v1/events", raw=bomb, headers=gz)
    assert (status, body["error"]) == (413, "too_large")
    status, body, _ = await client.post("/v1/events", raw=batch[:-20], headers=gz)
    assert (status, body["error"]) == (400, "malformed")
    status, body, _ = await client.post("/v1/events", raw=b"{}", headers={"Content-Encoding": "br"})
    assert (status, body["error"]) == (415, "unsupported_encoding")


async def test_each_refusal_has_its_status(client: Client) -> None:
    for raw in (b"{not json", b"[1, 2]", b'{"events": 3}', b"NaN"):
        status, body, _ = await client.post("/v1/batch", raw=raw)
        assert (status, body["error"]) == (400, "malformed"), raw
    status, _, _ = await client.post("/v1/batch", {"events": []})
    assert status == 400
    status, _, _ = await client.post("/v1/events", [order(1)])
    assert status == 400
    status, body, _ = await client.post("/v1/batch", {"events": [order(n) for n in range(1001)]})
    assert (status, body["error"]) == (413, "too_large")
    pad = "x" * (1024 * 1024)
    status, body, _ = await client.post("/v1/events", order(1, note=pad))
    assert (status, body["error"]) == (413, "too_large")
    # sent in chunks, without a Content-Length: cut off at the limit all the same

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100_000

    async with client.session.post(
        client.url + "/v1/events", data=chunks(), headers={"Authorization": f"Bearer {client.key}"}
    ) as resp:
        assert resp.status == 413
    # one event over 32 KiB inside a body under 1 MiB: that event alone is rejected
    big = order(2, note="y" * 40_000)
    status, body, _ = await client.post("/v1/batch", {"events": [big, order(3)]})
    assert status == 202
    assert [r.get("reason") for r in body["results"]] == ["too_large", None]


async def test_keys_bearer_and_basic_work_and_wrong_ones_get_401(
    client: Client, settings: Settings, redis: Redis
) -> None:
    basic = base64.b64encode(f"{client.key}:".encode()).decode()
    url = client.url + "/v1/events"
    async with client.session.post(
        url, json=order(1), headers={"Authorization": f"Basic {basic}"}
    ) as resp:
        assert resp.status == 202
    wrong_basic = base64.b64encode(f"{client.key}x:".encode()).decode()
    for headers in (
        {},
        {"Authorization": f"Bearer {client.key}x"},
        {"Authorization": f"Basic {wrong_basic}"},
        {"Authorization": "Basic !!!"},
        {"Authorization": f"Token {client.key}"},
    ):
        async with client.session.post(url, json=order(1), headers=headers) as resp:
            body = await resp.json()
            check_against_document("/v1/events", resp.status, body)
            assert (resp.status, body["error"]) == (401, "unauthorized"), headers
            assert "Bearer" in resp.headers["WWW-Authenticate"]
    # a key writes events, nothing else: no other route answers it
    async with client.session.get(
        client.url + "/v1/events", headers={"Authorization": f"Bearer {client.key}"}
    ) as resp:
        assert resp.status == 405
    # only a digest is stored, never the key
    stored = await redis.hgetall(f"{settings.key_prefix}keys")
    assert client.key not in json.dumps(stored)


async def test_a_revoked_key_stops_working_within_the_cache_time(
    start_server: ServerFactory, settings: Settings, redis: Redis, key: str
) -> None:
    server = await start_server(ingest_key_cache_seconds=0.5)
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url, key)
        assert (await client.post("/v1/events", order(1)))[0] == 202
        assert await KeyStore(IngestState(redis, settings.key_prefix)).revoke("shop")
        await asyncio.sleep(0.6)
        status, body, _ = await client.post("/v1/events", order(2))
        assert (status, body["error"]) == (401, "unauthorized")


async def test_over_the_rate_a_key_gets_429_with_retry_after(
    start_server: ServerFactory, key: str, settings: Settings, redis: Redis
) -> None:
    server = await start_server(ingest_rate_per_second=0.5, ingest_burst=2)
    other = await KeyStore(IngestState(redis, settings.key_prefix)).create("other")
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url, key)
        statuses = [(await client.post("/v1/events", order(n)))[0] for n in range(2)]
        assert statuses == [202, 202]
        status, body, headers = await client.post("/v1/events", order(3))
        assert (status, body["error"]) == (429, "rate_limited")
        assert int(headers["Retry-After"]) == 2
        # each key has its own bucket
        assert (await client.post("/v1/events", order(4), key=other))[0] == 202
        await server.ingest.stats.flush()
    stats = await redis.hgetall(f"{settings.key_prefix}ingest:stats")
    assert stats["request|events|202"] == "3"
    assert stats["request|events|429"] == "1"
    assert stats["accepted|order"] == "3"


async def test_requests_and_events_are_counted_in_redis(
    client: Client, settings: Settings, redis: Redis, start_server: ServerFactory
) -> None:
    await client.post("/v1/batch", {"events": [order(1), order(2, ts="yesterday")]})
    await client.post("/v1/events", order(3), key="rtk_wrong")
    key = f"{settings.key_prefix}ingest:stats"

    async def flushed() -> bool:
        return bool(await redis.exists(key))

    await wait_until(flushed, 5, "the stats flush")
    stats = await redis.hgetall(key)
    assert stats == {
        "request|batch|202": "1",
        "request|events|401": "1",
        "accepted|order": "1",
        "rejected|invalid_timestamp": "1",
    }


async def test_the_openapi_document_is_served(client: Client) -> None:
    async with client.session.get(client.url + "/openapi.json") as resp:
        assert resp.status == 200
        assert await resp.json() == DOC


async def test_resending_a_batch_changes_nothing(
    client: Client, workers: Workers, store: Store
) -> None:
    events = [order(n, f"c-{n % 3}", amount=float(n + 1)) for n in range(30)]
    workers.start()
    for _ in range(2):
        status, body, _ = await client.post("/v1/batch", {"events": events})
        assert (status, body["accepted"]) == (202, 30)

    async def seen_all() -> bool:
        stats = await store.stats()
        return sum(stats.accepted.values()) + sum(stats.duplicates.values()) >= 60

    await wait_until(seen_all, 60, "both copies to be applied", workers.logs)
    stats = await store.stats()
    assert (sum(stats.accepted.values()), sum(stats.duplicates.values())) == (30, 30)
    for c in range(3):
        state = await store.read_customer(f"c-{c}")
        assert state is not None
        mine = [e for e in events if e["customer_id"] == f"c-{c}"]
        assert state.orders == len(mine)
        assert state.revenue_micros == sum(int(e["amount"] * 1_000_000) for e in mine)


async def test_no_202_for_events_the_broker_did_not_take(
    settings: Settings, redis: Redis, key: str, tmp_path: Path
) -> None:
    """A broker that stops answering gets 503s; every event answered 202 is on its topic."""
    broker, bootstrap = runtime.start_broker(tmp_path)
    try:
        own = settings.model_copy(
            update={"kafka_bootstrap": bootstrap, "ingest_broker_timeout_seconds": 1.5}
        )
        topics = Topics.from_settings(own)
        await ensure_topics(bootstrap, topics, 2)
        server = IngestServer(own, "127.0.0.1", 0)
        await server.start()
        acknowledged: list[str] = []
        try:
            async with aiohttp.ClientSession() as session:
                client = Client(session, server.url, key)

                async def send(n: int) -> int:
                    status, body, headers = await client.post("/v1/events", order(n))
                    if status == 202:
                        acknowledged.append(f"o-{n}")
                    else:
                        assert (status, body["error"]) == (503, "broker_unavailable")
                        assert headers["Retry-After"] == "1"
                    return status

                assert await send(0) == 202
                broker.proc.send_signal(signal.SIGSTOP)  # alive, but answers nothing
                statuses = await asyncio.gather(*(send(n) for n in range(1, 6)))
                assert statuses == [503] * 5
                broker.proc.send_signal(signal.SIGCONT)

                # back: the producer recovers on its own
                async def accepted_again() -> bool:
                    return await send(100 + len(acknowledged)) == 202

                await wait_until(accepted_again, 20, "the broker to take events again")
        finally:
            await server.stop()
        found = await read_topic(
            bootstrap,
            topics.source("order"),
            lambda m: {json.loads(x.value)["event_id"] for x in m} >= set(acknowledged),
        )
        on_topic = {json.loads(m.value)["event_id"] for m in found}
        assert set(acknowledged) <= on_topic, set(acknowledged) - on_topic
        assert len(acknowledged) >= 2
    finally:
        broker.proc.send_signal(signal.SIGCONT)
        broker.stop()


async def test_a_down_broker_at_start_gives_503_not_a_crash(
    settings: Settings, key: str, tmp_path: Path
) -> None:
    own = settings.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{runtime.free_port()}",
            "ingest_broker_timeout_seconds": 1.0,
        }
    )
    server = IngestServer(own, "127.0.0.1", 0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            status, body, _ = await Client(session, server.url, key).post("/v1/events", order(1))
            assert (status, body["error"]) == (503, "broker_unavailable")
    finally:
        await server.stop()


def test_keys_command_prints_the_key_once_and_revokes(settings: Settings, tmp_path: Path) -> None:
    env = {**settings_env(settings), "RETENTION_DATA_DIR": str(tmp_path)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "retention.cli", "keys", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = run("create", "mobile")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("rtk_") and len(key) > 40
    again = run("create", "mobile")
    assert again.returncode == 2 and "exists" in again.stderr
    listed = run("list")
    assert listed.stdout.split()[0] == "mobile" and key not in listed.stdout
    assert run("revoke", "mobile").returncode == 0
    assert run("list").stdout.strip() == ""
    assert run("revoke", "mobile").returncode == 1


def test_ingest_command_serves_until_terminated(settings: Settings, tmp_path: Path) -> None:
    port = runtime.free_port()
    env = {**settings_env(settings), "RETENTION_DATA_DIR": str(tmp_path)}
    argv = runtime.retention_argv("ingest", "--port", str(port))
    proc = runtime.start_listening("ingest", argv, tmp_path, env, port).proc
    try:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as resp:
            assert json.loads(resp.read()) == DOC
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


async def test_up_serves_ingest_and_records_its_url(tmp_path: Path) -> None:
    from tests.integration.test_cli import retention
    from tests.integration.test_up import Up, customer_orders

    data_dir = tmp_path / "data"
    up = Up(data_dir)
    try:
        lines = up.until("ready in", timeout=60)
        status = json.loads(retention(data_dir, "status", "--json").stdout)
        url = status["ingest_url"]
        assert url.startswith("http://127.0.0.1:") and any(url in line for line in lines)
        created = retention(data_dir, "keys", "create", "web")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        async with aiohttp.ClientSession() as session:
            client = Client(session, url, key)
            status_code, _, _ = await client.post("/v1/events", order(1, "C9", amount=2.5))
            assert status_code == 202
        redis_url = up.recorded().redis_url
        deadline = time.monotonic() + 60
        while (await customer_orders(redis_url)).get("C9") != (1, 2.5):
            assert time.monotonic() < deadline, "the event sent over HTTP was not applied"
            await asyncio.sleep(0.3)
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(40) == 0
    finally:
        up.kill_all()


# --- the server's own limits ---------------------------------------------------------------


async def raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it is still open after ``seconds``."""
    got = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(4096), left)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


async def test_half_a_header_is_cut_off_after_the_header_timeout(
    start_server: ServerFactory,
) -> None:
    server = await start_server(ingest_header_timeout_seconds=0.3)
    reader, writer = await raw(server.url)
    start = time.monotonic()
    writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Le")
    assert await closed_within(reader, 3) == b""
    assert 0.25 < time.monotonic() - start < 2
    writer.close()
    # a connection that never sends anything goes the same way
    reader, writer = await raw(server.url)
    assert await closed_within(reader, 3) == b""
    writer.close()


async def test_a_body_that_stalls_gets_408_and_the_connection_closes(
    start_server: ServerFactory,
    key: str,
) -> None:
    server = await start_server(ingest_body_timeout_seconds=0.3)
    reader, writer = await raw(server.url)
    start = time.monotonic()
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"event_id": '
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"Connection: close" in head
    assert time.monotonic() - start < 2
    writer.close()


async def test_connections_past_the_cap_get_503(
    start_server: ServerFactory,
    key: str,
) -> None:
    server = await start_server(ingest_max_connections=2)
    held = [await raw(server.url) for _ in range(2)]
    start = time.monotonic()
    reader, writer = await raw(server.url)
    reply = await closed_within(reader, 3)
    assert reply is not None and reply.startswith(b"HTTP/1.1 503 "), reply
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Retry-After: 1" in head
    assert json.loads(body)["error"] == "unavailable"
    assert time.monotonic() - start < 1
    writer.close()
    for _, w in held:
        w.close()

    async def served() -> bool:
        async with aiohttp.ClientSession() as session:
            try:
                status = (await Client(session, server.url, key).post("/v1/events", order(1)))[0]
            except aiohttp.ClientError:
                return False
            return status == 202

    deadline = time.monotonic() + 5
    while not await served():
        assert time.monotonic() < deadline, "a freed connection was never given back"
        await asyncio.sleep(0.05)


async def test_each_key_is_limited_in_events_and_bytes(
    start_server: ServerFactory,
    key: str,
) -> None:
    server = await start_server(ingest_events_per_second=1.0, ingest_events_burst=5)
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url, key)
        status, _, _ = await client.post("/v1/batch", {"events": [order(n) for n in range(5)]})
        assert status == 202
        status, body, headers = await client.post("/v1/batch", {"events": [order(5), order(6)]})
        assert (status, body["error"]) == (429, "rate_limited")
        assert "events" in body["detail"]
        assert headers["Retry-After"] == "2"

    server = await start_server(ingest_bytes_per_second=100.0, ingest_bytes_burst=1000)
    batch = {"events": [order(n, note="x" * 100) for n in range(4)]}
    assert 600 < len(json.dumps(batch)) < 1000
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url, key)
        assert (await client.post("/v1/batch", batch))[0] == 202
        status, body, headers = await client.post("/v1/batch", batch)
        assert (status, body["error"]) == (429, "rate_limited")
        assert "bytes" in body["detail"]
        assert int(headers["Retry-After"]) >= 2


class CountedStore(KeyStore):
    reads = 0

    async def digests(self) -> dict[str, tuple[str, frozenset[str]]]:
        self.reads += 1
        return await super().digests()


async def test_concurrent_requests_share_one_hgetall(
    settings: Settings,
    redis: Redis,
    key: str,
) -> None:
    async def hgetalls() -> int:
        stats: dict[str, Any] = await redis.info("commandstats")
        return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))

    store = CountedStore(IngestState(redis, settings.key_prefix))
    cache = KeyCache(store, max_age=0)
    before = await hgetalls()
    callers = await asyncio.gather(*(cache.authenticate(f"Bearer {key}") for _ in range(20)))
    assert {c.name for c in callers if c is not None} == {"shop"}
    assert (store.reads, await hgetalls() - before) == (1, 1)


async def test_a_stopped_redis_is_read_with_backoff_not_per_request(settings: Settings) -> None:
    # no retries inside the client: the cache's own backoff is what is measured
    down = Redis(port=runtime.free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    store = CountedStore(IngestState(down, settings.key_prefix))
    cache = KeyCache(store, max_age=0, retry_first=0.2, retry_max=1)
    try:
        for _ in range(3):  # three waves of requests within the first backoff: one read
            results = await asyncio.gather(
                *(cache.authenticate("Bearer rtk_x") for _ in range(10)), return_exceptions=True
            )
            assert all(isinstance(r, KeysUnavailable) for r in results), results
        assert store.reads == 1
        assert isinstance(results[0], KeysUnavailable)
        await asyncio.sleep(results[0].retry_in)
        for _ in range(3):
            await asyncio.gather(
                *(cache.authenticate("Bearer rtk_x") for _ in range(10)), return_exceptions=True
            )
        assert store.reads == 2
    finally:
        await down.aclose()


async def test_the_redis_pool_is_bounded_and_waits_for_a_free_connection(
    start_server: ServerFactory,
) -> None:
    server = await start_server(ingest_redis_max_connections=2)
    assert server.redis.connection_pool.max_connections == 2
    start = time.monotonic()
    # four blocking reads of 0.2 s on two connections: two rounds, none refused
    await asyncio.gather(*(server.redis.blpop([f"nothing-{n}"], 0.2) for n in range(4)))
    assert time.monotonic() - start >= 0.35


def test_the_connection_gate_and_header_timeout_hold_on_uvloop() -> None:
    """`retention ingest` runs on uvloop by default, whose transports are not asyncio's."""
    import uvloop
    from aiohttp import web

    from retention.ingest import ConnectionGate

    async def scenario() -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, keepalive_timeout=0.3)
        await runner.setup()
        assert runner.server is not None
        gate = ConnectionGate(runner.server, 2)
        listener = await asyncio.get_running_loop().create_server(gate, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        writers = []
        try:
            held = [await raw(url) for _ in range(2)]
            writers += [writer for _, writer in held]
            reader, writer = await raw(url)
            writers.append(writer)
            reply = await closed_within(reader, 3)
            assert reply is not None and reply.startswith(b"HTTP/1.1 503 "), reply
            for reader, _ in held:  # nothing sent: closed after the header timeout
                assert await closed_within(reader, 3) == b""
            reader, writer = await raw(url)
            writers.append(writer)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"ok"), 3)).startswith(b"HTTP/1.1 200 ")
        finally:
            for writer in writers:
                writer.close()
            listener.close()
            await runner.cleanup()
            # every server side closed (the refused one once its client has): the loop
            # closes with no transport left open
            while gate.open or listener.sockets:
                await asyncio.sleep(0.01)

    uvloop.run(scenario())
