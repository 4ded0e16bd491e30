"""The HTTP API fuzzed from its own OpenAPI document (schemathesis): requests made from the
document's schemas, valid and not, against the real server process on the session's
broker and Redis. No answer may be a server error, and every answer must be one the
document describes (status, content type, headers, body schema).

Not checked: that every request the schema refuses is refused, and every one it allows is
accepted. The event contract judges more than a JSON schema can say (bounds per currency,
times against the clock, fields read only with some actions) and ignores fields it does not
know, and a batch answers per event: the document says so in words."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from retention import runtime
from retention.api_keys import KeyStore
from retention.config import Settings
from retention.ingest import loads_document
from store.connect import connect
from store.ingest_state import IngestState
from tests.integration.conftest import Stack

SCHEMA = schemathesis.openapi.from_dict(loads_document())


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``retention ingest`` as a process of its own, and an admin key (every scope)."""
    own = Settings(
        kafka_bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        topic_prefix="fuzz-",
        key_prefix="fuzz:",
        partitions=1,
        ingest_key_cache_seconds=0,
    )

    async def make_key() -> str:
        redis = connect(stack.redis_url, decode_responses=True)
        try:
            return await KeyStore(IngestState(redis, own.key_prefix)).create("fuzz", ["admin"])
        finally:
            await redis.aclose()

    key = asyncio.run(make_key())
    port = runtime.free_port()
    log_dir: Path = tmp_path_factory.mktemp("fuzz")
    argv = runtime.retention_argv("ingest", "--host", "127.0.0.1", "--port", str(port))
    process = runtime.start_listening("ingest", argv, log_dir, runtime.settings_env(own), port)
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        process.stop()


@SCHEMA.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_answer_is_a_server_error_or_undocumented(
    case: schemathesis.Case, served: tuple[str, str]
) -> None:
    url, key = served
    case.call_and_validate(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        excluded_checks=[checks.negative_data_rejection, checks.positive_data_acceptance],
    )
