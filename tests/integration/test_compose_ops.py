"""The ops services of the compose file: exporter, Prometheus, Alertmanager, Grafana.

Checked with ``docker-compose config`` like tests/integration/test_compose.py, whose
helpers these tests reuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.integration.test_compose import (
    COMPOSE_FILE,
    ROOT,
    as_argv,
    as_env,
    as_mount,
    load_config,
    run_compose,
)

OPS_SERVICES = {"exporter", "prometheus", "alertmanager", "grafana"}


def mounts(service: dict[str, object]) -> dict[str, str]:
    """target → source of a service's volumes."""
    volumes = service.get("volumes") or []
    assert isinstance(volumes, list)
    return dict(as_mount(v) for v in volumes)


def test_ops_services_start_without_a_profile() -> None:
    services = load_config()["services"]
    assert set(services) >= OPS_SERVICES
    for name in OPS_SERVICES:
        assert not services[name].get("profiles"), name
    assert set(run_compose("--services").split()) >= OPS_SERVICES


def test_exporter_is_the_retention_image_running_metrics_server() -> None:
    services = load_config()["services"]
    exporter, worker = services["exporter"], services["worker"]
    argv = as_argv(exporter["command"])
    assert argv[:2] == ["retention", "metrics-server"], argv
    # explicit: inside its container the exporter must listen beyond loopback
    assert argv[argv.index("--host") + 1] == "0.0.0.0", argv
    assert argv[argv.index("--port") + 1] == "9465", argv
    assert not exporter.get("ports"), "the exporter is for Prometheus on the compose network"
    assert exporter["image"] == worker["image"] and exporter["build"] == worker["build"]
    env = as_env(exporter.get("environment"))
    assert env["REDIS_URL"] == "redis://redis:6379/0" and env["KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_prometheus_mounts_its_config_and_scrapes_compose_services() -> None:
    services = load_config()["services"]
    prometheus = services["prometheus"]
    assert Path(mounts(prometheus)["/etc/prometheus"]).resolve() == ROOT / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in as_argv(prometheus["command"])

    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        + [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        for job in config["scrape_configs"]
    }
    assert targets["retention-exporter"] == ["exporter:9465"]
    assert targets["retention-worker"] == ["worker:9464"]
    # the worker's metrics default to loopback: in its container they must listen wider
    worker_env = as_env(services["worker"].get("environment"))
    assert worker_env["RETENTION_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert worker_env["RETENTION_WORKER_METRICS_PORT"] == "9464"
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]
    for host in ("exporter", "worker", "alertmanager"):
        assert host in services


def test_alertmanager_reads_its_password_from_a_secret() -> None:
    config = load_config()
    alertmanager = config["services"]["alertmanager"]
    target = mounts(alertmanager)["/etc/alertmanager/alertmanager.yml"]
    assert Path(target).resolve() == ROOT / "prometheus" / "alertmanager.yml"
    secrets = [s if isinstance(s, str) else s["source"] for s in alertmanager["secrets"]]
    assert secrets == ["smtp_password"]
    assert "smtp_password" in config["secrets"]
    text = (ROOT / "prometheus" / "alertmanager.yml").read_text()
    assert "auth_password_file: /run/secrets/smtp_password" in text
    assert "auth_password:" not in text


def test_grafana_is_provisioned_with_the_dashboards() -> None:
    grafana = load_config()["services"]["grafana"]
    found = {target: Path(source).resolve() for target, source in mounts(grafana).items()}
    assert found["/etc/grafana/provisioning"] == ROOT / "grafana" / "provisioning"
    assert found["/etc/grafana/dashboards"] == ROOT / "grafana" / "dashboards"
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "retention.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    datasource = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_grafana_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never written in the compose file; without it the container refuses to start."""
    assert "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:-}" in COMPOSE_FILE.read_text()
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", "from-dot-env")
    configured = yaml.safe_load(run_compose())["services"]["grafana"]
    assert as_env(configured["environment"])["GF_SECURITY_ADMIN_PASSWORD"] == "from-dot-env"

    monkeypatch.delenv("GRAFANA_ADMIN_PASSWORD")
    unset = yaml.safe_load(run_compose())["services"]["grafana"]
    assert as_env(unset["environment"])["GF_SECURITY_ADMIN_PASSWORD"] == ""
    guard = " ".join(as_argv(unset["entrypoint"]))
    assert 'test -n "$$GF_SECURITY_ADMIN_PASSWORD"' in guard or (
        'test -n "$GF_SECURITY_ADMIN_PASSWORD"' in guard
    )
    assert guard.rstrip().endswith("exec /run.sh")
    assert "GRAFANA_ADMIN_PASSWORD=" in (ROOT / ".env.example").read_text()


def test_ops_ports_listen_on_loopback_only() -> None:
    services = load_config()["services"]
    for name in ("prometheus", "alertmanager", "grafana"):
        for port in services[name].get("ports") or []:
            published = port if isinstance(port, str) else port.get("host_ip", "")
            assert str(published).startswith("127.0.0.1"), (name, port)
    assert not services["exporter"].get("ports"), "the exporter is for Prometheus only"
