"""The ops view against real servers: exporter, Prometheus, promtool and amtool.

Events go through real workers into the session Redis; a real exporter process serves
them; a real Prometheus scrapes it every second. Every PromQL expression of every
dashboard panel must return data, every rule expression must evaluate without error, and
the configuration files must pass Prometheus' and Alertmanager's own checkers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from contract.events import build_event
from retention import runtime
from retention.config import Settings
from retention.exporter import RetentionCollector, serve_worker_metrics
from retention.metrics_http import ScrapeAuth
from store.store import Store, accepted_record
from streams.producer import EventProducer
from streams.worker_metrics import WorkerMetrics
from tests.integration.conftest import Workers, settings_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.yml"))
INSTALL_HINTS = {
    "prometheus": "apt-get install prometheus (or run `make install` as root)",
    "promtool": "apt-get install prometheus (or run `make install` as root)",
    "amtool": "apt-get install prometheus-alertmanager (or run `make install` as root)",
}
#: Grafana's interval variable, replaced by a window that holds several 1 s scrapes.
RATE_INTERVAL = "15s"
#: Prometheus scrapes the exporter with a bearer token and the worker with basic auth,
#: as the documented scrape config (docs/operations.md) does.
TOKEN = "ops-token"
BASIC = ("prometheus", "ops-password")
METRIC = re.compile(r"\b(retention_[a-z0-9_]+)")
#: Where a rule's runbook link points unless Prometheus sets the external label
#: ``runbook_base`` (prometheus/rules/retention.yml, the header).
RUNBOOK = "http://localhost:8088/runbook"
#: The external label a real Prometheus gets below, to see that it wins over the default.
RUNBOOK_BASE = "https://wiki.example.com/retention/runbook"
#: Which receiver of prometheus/alertmanager.yml each kind of alert reaches.
RECEIVERS = {"critical": "oncall", "warning": "ops"}


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINTS[name]}", pytrace=False)
    return found


def run_tool(*argv: str) -> str:
    proc = subprocess.run(
        [binary(argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def with_all(expr: str, board: dict[str, Any]) -> str:
    """``expr`` with each query variable of ``board`` set to its "All" value."""
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            expr = expr.replace(f"${variable['name']}", variable["allValue"])
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every target of every panel, rows' nested panels included, and the
    series selector of every variable's label_values(), with every variable at "All"."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]], where: str, board: dict[str, Any]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"{where}: {panel['title']}", with_all(target["expr"], board)))
            walk(panel.get("panels", []), where, board)

    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        walk(board["panels"], path.name, board)
        for variable in board.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                selector = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"]["query"])
                assert selector, f"{path.name}: ${variable['name']}: {variable['query']}"
                found.append((f"{path.name}: ${variable['name']}", with_all(selector[1], board)))
    return found


def rule_exprs() -> list[tuple[str, str]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("alert") or rule.get("record"), rule["expr"]))
    return found


# --- the checkers, as subprocesses ---------------------------------------------------


def test_missing_binary_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install prometheus-alertmanager"):
        binary("amtool")


def test_promtool_checks_config_and_rules(tmp_path: Path) -> None:
    assert RULE_FILES and RULE_TESTS
    # the scrape token is a compose secret that exists only in the container: promtool
    # checks that the file is there, so a copy of the config reads a stand-in
    token = tmp_path / "metrics_token"
    token.write_text("token\n")
    text = (ROOT / "prometheus" / "prometheus.yml").read_text()
    assert "/run/secrets/metrics_token" in text
    (tmp_path / "prometheus.yml").write_text(text.replace("/run/secrets/metrics_token", str(token)))
    (tmp_path / "rules").symlink_to(ROOT / "prometheus" / "rules")
    run_tool("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    run_tool("promtool", "check", "rules", *map(str, RULE_FILES))
    run_tool("promtool", "test", "rules", *map(str, RULE_TESTS))


def test_the_documented_scrape_config_with_auth_passes_promtool(tmp_path: Path) -> None:
    """The documented example: a bearer token for the exporter, basic auth for a worker."""
    readme = (ROOT / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```yaml\n(scrape_configs:.*?)```", readme, re.S)
    assert len(blocks) == 1, "docs/operations.md should show one scrape config example"
    config = yaml.safe_load(blocks[0])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["retention-exporter"]["authorization"]["type"] == "Bearer"
    assert jobs["retention-worker"]["basic_auth"]["username"]
    text = blocks[0].replace("/etc/prometheus/secrets", str(tmp_path))
    for name in ("retention_metrics_token", "retention_metrics_password"):
        (tmp_path / name).write_text("secret\n")
    (tmp_path / "prometheus.yml").write_text(text)
    run_tool("promtool", "check", "config", str(tmp_path / "prometheus.yml"))


def test_amtool_checks_alertmanager_config() -> None:
    run_tool("amtool", "check-config", "prometheus/alertmanager.yml")


def test_every_alert_reaches_the_receiver_meant_for_it() -> None:
    """Asked of amtool with each rule's labels: nothing falls through to "null"."""
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                labels = {"alertname": rule["alert"], **rule["labels"]}
                if labels["alertname"] == "Watchdog":
                    expected = "deadmansswitch"
                elif labels.get("category") == "business":
                    expected = "business"
                else:
                    expected = RECEIVERS[labels["severity"]]
                argv = [f"{k}={v}" for k, v in labels.items()]
                found = run_tool(
                    "amtool", "config", "routes", "test",
                    "--config.file=prometheus/alertmanager.yml", *argv,
                )  # fmt: skip
                assert found.splitlines()[0].strip() == expected, (labels, found)


def test_alertmanager_sends_only_to_services_that_exist() -> None:
    """A webhook goes to a service of the compose file or to a fully qualified name
    outside it, never to a bare name that nothing on the compose network answers; and
    the default route sends nothing rather than somewhere unknown."""
    config = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    services = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])
    receivers = {r["name"]: r for r in config["receivers"]}
    default = receivers[config["route"]["receiver"]]
    assert set(default) == {"name"}, f"the default receiver sends somewhere: {default}"
    for receiver in receivers.values():
        for hook in receiver.get("webhook_configs", []):
            host = urllib.parse.urlsplit(hook["url"]).hostname or ""
            assert host in services or "." in host, f"{receiver['name']}: {hook['url']}"
    # the heartbeat goes to the dead man's switch, and only there
    watchdog = [r for r in config["route"]["routes"] if r["matchers"] == ['alertname = "Watchdog"']]
    assert watchdog and watchdog[0]["receiver"] == "deadmansswitch"
    assert not watchdog[0].get("continue")
    assert receivers["deadmansswitch"]["webhook_configs"][0]["url"].startswith("https://")


def test_every_alert_has_the_required_fields_and_tests() -> None:
    runbook = (ROOT / "prometheus" / "runbook.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    tests = "\n".join(p.read_text() for p in RULE_TESTS)
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule["alert"]
                assert rule.get("for"), name
                assert rule["labels"]["severity"] in {"critical", "warning", "none"}, name
                notes = rule["annotations"]
                assert notes["summary"] and notes["description"], name
                link = f'{{{{ or $externalLabels.runbook_base "{RUNBOOK}" }}}}#{name.lower()}'
                assert notes["runbook_url"] == link, name
                assert rule["labels"].get("category", "business") == "business", name
                assert name.lower() in anchors, f"runbook.md has no section {name}"
                cases = re.findall(rf"alertname: {name}\n\s+exp_alerts:(.*)", tests)
                assert any(c.strip() == "[]" for c in cases), f"{name}: no 'does not fire' case"
                assert any(c.strip() == "" for c in cases), f"{name}: no 'fires' case"


# --- real exporter, real Prometheus ---------------------------------------------------


def story(now: datetime, customers: int) -> list[dict[str, Any]]:
    """Orders, logins and ratings of ``customers`` over the last ten weeks."""
    events: list[dict[str, Any]] = []
    for c in range(customers):
        cid = f"ops-{c:04d}"
        for k in range(4):
            ts = now - timedelta(days=(c * 7 + k * 17) % 70, hours=1)
            events.append(
                {
                    "type": "order",
                    "customer_id": cid,
                    "event_id": f"{cid}-o{k}",
                    "ts": ts.timestamp(),
                    "amount": 10 + k,
                    "country": ("DE", "FR", "JP")[c % 3],
                    "channel": ("web", "app")[k % 2],
                }
            )
            events.append(
                {
                    "type": "login",
                    "customer_id": cid,
                    "event_id": f"{cid}-l{k}",
                    "ts": (ts - timedelta(hours=2)).timestamp(),
                }
            )
        events.append(
            {
                "type": "support",
                "customer_id": cid,
                "event_id": f"{cid}-s",
                "ticket_id": "t",
                "action": "rated",
                "survey": "csat",
                "score": 4,
                "ts": (now - timedelta(days=1)).timestamp(),
            }
        )
        # a ticket answered after (c % 5) hours, and NPS and CES ratings
        opened = now - timedelta(days=2)
        for action, at, extra in (
            ("opened", opened, {}),
            ("agent_replied", opened + timedelta(hours=c % 5 + 1), {}),
            ("rated", opened + timedelta(hours=6), {"survey": "nps", "score": c % 11}),
            ("rated", opened + timedelta(hours=7), {"survey": "ces", "score": c % 7 + 1}),
        ):
            events.append(
                {
                    "type": "support",
                    "customer_id": cid,
                    "event_id": f"{cid}-{action}-{extra.get('survey', '')}",
                    "ticket_id": "t2",
                    "action": action,
                    "ts": at.timestamp(),
                    **extra,
                }
            )
    return events


async def seed_stage_keys(redis: Redis, prefix: str) -> None:
    """What the lifecycle, risk and notification stages write (their key contract)."""
    await redis.hset(
        prefix + "life:counts",
        mapping={"new": 5, "active": 30, "at_risk": 4, "churned": 2, "reactivated": 1},
    )
    await redis.hset(prefix + "risk:reasons", mapping={"no_recent_order": 3, "open_ticket": 1})
    await redis.set(prefix + "risk:high_value", 1)
    await redis.hset(prefix + "cltv:at_risk", mapping={"no_recent_order": 1_250_000_000})
    await redis.hset(prefix + "notify:stats", mapping={"sent|email": 3, "failed|webhook": 1})
    await redis.hset(prefix + "risk:bands", mapping={"l": 30, "m": 5, "h": 2})
    outcomes = [["at_risk", "high", "returned", 2], ["at_risk", "high", "not_returned", 3]]
    await redis.set(prefix + "alerts:outcomes", json.dumps({"window_days": 30, "counts": outcomes}))
    await redis.set(prefix + "fit:at", str(time.time()))  # the leader's last refit


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def http_text(url: str, authorization: str | None = None) -> str:
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"query": expr})
        try:
            return http_json(f"{self.url}/api/v1/query?{query}")
        except urllib.error.HTTPError as exc:  # 400 carries the parse error
            return {"status": "error", "error": exc.read().decode()}


@pytest.fixture
def exporter(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The exporter process, as `retention metrics-server` runs it."""
    port = runtime.free_port()
    secured = Settings(**{**settings.model_dump(), "metrics_bearer_token": TOKEN})
    argv = runtime.retention_argv("metrics-server", "--host", "127.0.0.1", "--port", str(port))
    process = runtime.start_listening("exporter", argv, tmp_path, settings_env(secured), port, 15)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture
def worker_metrics() -> Iterator[str]:
    """A worker's metrics endpoint, as a hooked worker serves it."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, ("orders", "logins", "support"))
    for n in range(1, 6):
        metrics.observe_batch(0.004 * n, 100 * n)
        metrics.applied("orders", 100 * n)
    metrics.redis_error()
    auth = ScrapeAuth.from_settings(Settings(metrics_basic_auth=":".join(BASIC)))
    server, _ = serve_worker_metrics(0, registry, host="127.0.0.1", auth=auth)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def start_prometheus(
    tmp_path: Path, targets: dict[str, tuple[str, dict[str, Any]]]
) -> runtime.Process:
    """Prometheus scraping each job's target every second, with the job's auth settings."""
    port = runtime.free_port()
    config = {
        "global": {
            "scrape_interval": "1s",
            "evaluation_interval": "1s",
            "external_labels": {"runbook_base": RUNBOOK_BASE},
        },
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}], **auth}
            for job, (target, auth) in targets.items()
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    argv = [
        binary("prometheus"),
        f"--config.file={path}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = runtime.start_listening("prometheus", argv, tmp_path, None, port, 20)
    process.port = port  # type: ignore[attr-defined]
    return process


async def test_dashboards_and_rules_query_a_real_prometheus(
    settings: Settings,
    store: Store,
    redis: Redis,
    producer: EventProducer,
    workers: Workers,
    exporter: str,
    worker_metrics: str,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    events = story(now, customers=40)
    for event in events:
        await producer.send(event)
    await producer.send_raw(producer.topics.source("order"), b"{not json", b"ops-0000")
    await producer.flush()
    workers.start()

    async def applied() -> bool:
        stats = await store.stats()
        return (
            sum(stats.accepted.values()) + sum(n for n in stats.rejected.values())
            >= len(events) + 1
        )

    await wait_until(applied, 45, "the events to be applied", workers.logs)
    await seed_stage_keys(redis, settings.key_prefix)

    prometheus = start_prometheus(
        tmp_path,
        {
            "retention-exporter": (
                exporter,
                {"authorization": {"type": "Bearer", "credentials": TOKEN}},
            ),
            "retention-worker": (
                worker_metrics,
                {"basic_auth": {"username": BASIC[0], "password": BASIC[1]}},
            ),
        },
    )
    try:
        prom = Prometheus(f"http://127.0.0.1:{prometheus.port}")  # type: ignore[attr-defined]

        async def scraped() -> bool:
            found = prom.query("count_over_time(retention_tracked_customers[15s])")
            result = found.get("data", {}).get("result", [])
            return bool(result) and float(result[0]["value"][1]) >= 5

        await wait_until(scraped, 30, "five scrapes of the exporter", prometheus.log_path.read_text)
        # both targets up: Prometheus got through their auth
        up = prom.query("up")["data"]["result"]
        assert sorted(float(r["value"][1]) for r in up) == [1.0, 1.0], up
        exposed = exposed_names(
            http_text(f"http://{exporter}/metrics", f"Bearer {TOKEN}")
        ) | exposed_names(http_text(f"http://{worker_metrics}/metrics", basic_header(*BASIC)))

        empty = []
        for where, expr in dashboard_exprs():
            for name in METRIC.findall(expr):
                assert name in exposed, f"{where}: {name} is not exported"
            found = prom.query(expr.replace("$__rate_interval", RATE_INTERVAL))
            assert found["status"] == "success", f"{where}: {expr}: {found}"
            if not found["data"]["result"]:
                empty.append(f"{where}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        for name, expr in rule_exprs():
            for metric in METRIC.findall(expr):
                assert metric in exposed, f"{name}: {metric} is not exported"
            found = prom.query(expr)
            assert found["status"] == "success", f"{name}: {expr}: {found}"

        def rules() -> list[dict[str, Any]]:
            groups = http_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
            return [r for g in groups for r in g["rules"]]

        async def evaluated() -> bool:
            found = rules()
            names = {a["labels"]["alertname"] for r in found for a in r.get("alerts", [])}
            return all(r["health"] != "unknown" for r in found) and "Watchdog" in names

        await wait_until(evaluated, 10, "every rule evaluated", prometheus.log_path.read_text)
        found = rules()
        assert len(found) == len(rule_exprs())
        assert all(r["health"] == "ok" for r in found), [r for r in found if r["health"] != "ok"]
        alerts = {a["labels"]["alertname"]: a for r in found for a in r.get("alerts", [])}
        # pending or firing, its annotations are expanded: the external label wins
        assert alerts["Watchdog"]["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#watchdog"
    finally:
        prometheus.stop()


def exposed_names(text: str) -> set[str]:
    """Family names and sample names (``_total``, ``_bucket``, ...) of an exposition."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def series_count(registry: CollectorRegistry) -> int:
    return sum(1 for line in generate_latest(registry).decode().splitlines() if line[:1] != "#")


async def add_customers(store: Store, first: int, count: int, now: datetime) -> None:
    records = []
    for n in range(first, first + count):
        cid = f"card-{n:05d}"
        event = build_event(
            {
                "type": "order",
                "customer_id": cid,
                "event_id": f"{cid}-o",
                "ts": (now - timedelta(days=n % 30)).timestamp(),
                "amount": 5,
            }
        )
        records.append(accepted_record(event, "orders", 0, n))
    await store.apply_batch(records)


async def test_series_count_does_not_grow_with_customers(settings: Settings, store: Store) -> None:
    """From N to 10N customers through the real store: the same series, other values."""
    now = datetime.now(UTC)
    collector = RetentionCollector(settings, cache_seconds=0)  # each scrape a fresh read
    try:
        await add_customers(store, 0, 30, now)
        before = await asyncio.to_thread(series_count, registry_with(collector))
        await add_customers(store, 30, 270, now)
        started = time.monotonic()
        after = await asyncio.to_thread(series_count, registry_with(collector))
        assert time.monotonic() - started < 5
    finally:
        collector.close()
    assert await store.customer_count() == 300
    assert after == before


def registry_with(collector: RetentionCollector) -> CollectorRegistry:
    """A fresh registry per scrape, around one collector."""
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
