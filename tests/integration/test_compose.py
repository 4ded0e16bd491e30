"""The compose file for users' servers, checked with ``docker-compose config``.

``config`` only parses, validates and normalises the file; it needs no Docker engine.
Debian's docker-compose 1.29 lists services of every profile (each with its
``profiles`` key) whether or not ``--profile`` is given; newer Compose hides them unless
their profile is enabled. The checks accept both and always verify the enabled case.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CLUSTER_NODES = ("redis-node-1", "redis-node-2", "redis-node-3")
CLUSTER_SERVICES = (*CLUSTER_NODES, "redis-cluster-init")
INSTALL_HINT = (
    "docker-compose is not installed: `apt-get install docker-compose` "
    "(or run `make install` as root)"
)


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


def run_compose(
    *args: str, profiles: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
) -> str:
    # REDIS_URL from the caller's shell would be interpolated into the app services
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k != "REDIS_URL"}
    env.update(extra_env or {})
    argv = [compose_binary(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        argv += ["--profile", profile]
    argv += ["config", *args]
    proc = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, (
        f"`{shlex.join(argv)}` exited with {proc.returncode}:\n{proc.stderr}{proc.stdout}"
    )
    return proc.stdout


@functools.cache
def load_config(profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parsed ``config`` output; called from the tests (not fixtures) so problems FAIL."""
    parsed = yaml.safe_load(run_compose(profiles=profiles))
    assert isinstance(parsed, dict) and isinstance(parsed.get("services"), dict), parsed
    return parsed


def as_argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def as_env(environment: dict[str, Any] | list[str] | None) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {k: "" if v is None else str(v) for k, v in environment.items()}
    return dict(item.partition("=")[::2] for item in environment)


def as_depends(depends_on: dict[str, Any] | list[str] | None) -> dict[str, str | None]:
    if depends_on is None:
        return {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on)
    return {name: (spec or {}).get("condition") for name, spec in depends_on.items()}


def as_mount(volume: str | dict[str, Any]) -> tuple[str, str]:
    """(target, source) of a short (``source:target[:mode]``) or long volume entry."""
    if isinstance(volume, dict):
        return str(volume.get("target")), str(volume.get("source"))
    source, _, rest = volume.partition(":")
    return (rest.split(":", 1)[0], source) if rest else (source, "")


def test_missing_binary_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install docker-compose"):
        compose_binary()


def test_core_services_exist() -> None:
    default_config = load_config()
    services = default_config["services"]
    assert {"kafka", "redis", "worker"} <= set(services)
    listed = set(run_compose("--services").split())
    assert {"kafka", "redis", "worker"} <= listed


def test_kafka_is_single_node_kraft() -> None:
    default_config = load_config()
    kafka = default_config["services"]["kafka"]
    image = kafka["image"]
    assert image.startswith("apache/kafka:"), image
    tag = image.split(":", 1)[1]
    assert tag[:2] in {"3.", "4."}, f"pin a 3.x or 4.x tag, not {tag!r}"

    env = as_env(kafka.get("environment"))
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper.connect" not in env and "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka["healthcheck"]["test"], "kafka needs a healthcheck"


def test_redis_persists_with_aof() -> None:
    default_config = load_config()
    redis = default_config["services"]["redis"]
    assert str(redis["image"]).split(":", 1)[-1].startswith("7"), redis["image"]
    argv = as_argv(redis.get("command"))
    assert "--appendonly" in argv, argv
    assert argv[argv.index("--appendonly") + 1] == "yes", argv

    mounts = dict(as_mount(v) for v in redis.get("volumes") or [])
    assert "/data" in mounts, f"redis needs a volume on /data: {redis.get('volumes')}"
    assert mounts["/data"] in (default_config.get("volumes") or {}), "use a named volume"
    assert redis["healthcheck"]["test"], "redis needs a healthcheck"


def test_worker_reaches_kafka_and_redis() -> None:
    default_config = load_config()
    worker = default_config["services"]["worker"]
    env = as_env(worker.get("environment"))
    assert env.get("KAFKA_BOOTSTRAP") == "kafka:9092"
    assert env.get("REDIS_URL") == "redis://redis:6379/0"
    assert as_argv(worker.get("command")) == ["retention", "worker"]

    build = worker["build"]
    context = build if isinstance(build, str) else build["context"]
    assert Path(context).resolve() == ROOT
    assert (ROOT / "Dockerfile").is_file()

    assert as_depends(worker.get("depends_on")) == {
        "kafka": "service_healthy",
        "redis": "service_healthy",
    }


def test_worker_can_be_scaled() -> None:
    default_config = load_config()
    worker = default_config["services"]["worker"]
    assert "container_name" not in worker, "a fixed container name prevents --scale"
    assert not worker.get("ports"), "a published host port prevents --scale"


def test_demo_only_in_demo_profile() -> None:
    default_config = load_config()
    demo_config = load_config(profiles=("demo",))
    assert run_compose("--profiles").split() == ["cluster", "demo"]

    for name, service in default_config["services"].items():
        if name != "demo" and name not in CLUSTER_SERVICES:
            assert not service.get("profiles"), f"{name} must start without a profile"
    hidden_or_tagged = default_config["services"].get("demo")
    if hidden_or_tagged is not None:
        assert hidden_or_tagged.get("profiles") == ["demo"]

    demo = demo_config["services"]["demo"]
    assert demo.get("profiles") == ["demo"]
    assert as_argv(demo.get("command")) == ["retention", "demo"]
    worker = demo_config["services"]["worker"]
    assert demo["image"] == worker["image"]
    assert demo["build"] == worker["build"]
    env = as_env(demo.get("environment"))
    assert env.get("KAFKA_BOOTSTRAP") == "kafka:9092"
    assert "demo" in run_compose("--services", profiles=("demo",)).split()


def test_cluster_only_in_cluster_profile() -> None:
    default_config = load_config()
    for name in CLUSTER_SERVICES:
        hidden_or_tagged = default_config["services"].get(name)
        if hidden_or_tagged is not None:
            assert hidden_or_tagged.get("profiles") == ["cluster"], name
    assert set(CLUSTER_SERVICES) <= set(run_compose("--services", profiles=("cluster",)).split())


def test_cluster_nodes_run_in_cluster_mode_on_their_own_volumes() -> None:
    cluster_config = load_config(profiles=("cluster",))
    services = cluster_config["services"]
    data_volumes = set()
    for name in CLUSTER_NODES:
        node = services[name]
        assert node.get("profiles") == ["cluster"], name
        assert str(node["image"]).split(":", 1)[-1].startswith("7"), node["image"]
        argv = as_argv(node.get("command"))
        assert argv[argv.index("--cluster-enabled") + 1] == "yes", argv
        assert "--cluster-config-file" in argv, argv
        assert argv[argv.index("--cluster-announce-hostname") + 1] == name, argv
        assert argv[argv.index("--appendonly") + 1] == "yes", argv
        mounts = dict(as_mount(v) for v in node.get("volumes") or [])
        assert mounts.get("/data") in (cluster_config.get("volumes") or {}), node.get("volumes")
        data_volumes.add(mounts["/data"])
        assert node["healthcheck"]["test"], f"{name} needs a healthcheck"
    assert len(data_volumes) == len(CLUSTER_NODES), "each node needs its own volume"


def test_cluster_init_joins_all_nodes_once_they_are_healthy() -> None:
    init = load_config(profiles=("cluster",))["services"]["redis-cluster-init"]
    assert init.get("profiles") == ["cluster"]
    assert as_depends(init.get("depends_on")) == dict.fromkeys(CLUSTER_NODES, "service_healthy")
    script = (
        " ".join(as_argv(init.get("entrypoint"))) + " " + " ".join(as_argv(init.get("command")))
    )
    assert "--cluster create" in script, script
    assert "--cluster-replicas 0" in script and "--cluster-yes" in script, script
    for name in CLUSTER_NODES:
        assert f"ip {name})" in script, f"{name} missing from the create command: {script}"
    assert str(init.get("restart", "no")) == "no", "a one-shot service must not restart"


def test_redis_url_can_point_the_apps_at_a_cluster_node() -> None:
    url = "redis://redis-node-1:6379/0"
    config = yaml.safe_load(run_compose(profiles=("cluster",), extra_env={"REDIS_URL": url}))
    for name in ("worker", "exporter", "ingest"):
        assert as_env(config["services"][name].get("environment")).get("REDIS_URL") == url, name
