"""The compose file for users' servers, checked with ``docker-compose config``.

``config`` only parses, validates and normalises the file; it needs no Docker engine.
Debian's docker-compose 1.29 lists services of every profile (each with its
``profiles`` key) whether or not ``--profile`` is given; newer Compose hides them unless
their profile is enabled. The checks accept both and always verify the enabled case.
"""

from __future__ import annotations

import functools
import os
import re
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
    assert "CLIENTS://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
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
    assert run_compose("--profiles").split() == ["cluster", "demo", "evaluator"]

    for name, service in default_config["services"].items():
        if name not in ("demo", "evaluator") and name not in CLUSTER_SERVICES:
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


def test_evaluation_apart_is_one_setting_and_one_profile() -> None:
    """Workers evaluate unless RETENTION_EVALUATION says separate; the evaluator service
    runs only in its profile, with the workers' image, secrets and networks."""
    default_env = as_env(load_config()["services"]["worker"].get("environment"))
    assert default_env["RETENTION_EVALUATION"] == "worker"
    services = yaml.safe_load(
        run_compose(profiles=("evaluator",), extra_env={"RETENTION_EVALUATION": "separate"})
    )["services"]
    evaluator, worker = services["evaluator"], services["worker"]
    assert evaluator.get("profiles") == ["evaluator"]
    assert as_argv(evaluator.get("command"))[:2] == ["retention", "evaluator"]
    for service in (evaluator, worker):
        assert as_env(service.get("environment"))["RETENTION_EVALUATION"] == "separate"
    assert evaluator["image"] == worker["image"]
    assert secrets_of(evaluator) == secrets_of(worker)
    assert networks_of(evaluator) == {"backend"}
    assert not evaluator.get("ports") and "container_name" not in evaluator


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


# --- secure by default ------------------------------------------------------------------

ALL_PROFILES = ("cluster", "demo", "evaluator")
REDIS_SERVICES = ("redis", *CLUSTER_NODES)
MONITORING_SERVICES = ("prometheus", "alertmanager", "grafana")
#: a patch version: 1.2.3 or v1.2.3, optionally with a variant (-slim-bookworm, -alpine)
PATCH_TAG = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[a-z0-9.-]+)?$")
#: Redis 7.4.6 fixes CVE-2025-49844 (a use-after-free in the Lua parser)
REDIS_AT_LEAST = (7, 4, 6)
LONG_RUNNING = ("always", "unless-stopped", "on-failure")


def compose_source() -> dict[str, Any]:
    """The compose file as written (scripts with compose's ``$$`` escapes), anchors merged."""
    parsed = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(parsed, dict)
    return parsed


def script_of(service: dict[str, Any]) -> str:
    """The shell script of an ``entrypoint: [/bin/sh, -c, SCRIPT, ...]`` as the shell sees it."""
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"], entrypoint
    return str(entrypoint[2]).replace("$$", "$")


def networks_of(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    return set(networks) if isinstance(networks, (dict, list)) else set()


def secrets_of(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}


def test_every_image_is_pinned_to_a_patch_version() -> None:
    services = load_config(profiles=ALL_PROFILES)["services"]
    for name, service in services.items():
        image = str(service["image"])
        if "build" in service:
            assert image == "retention-tracker:local", (name, image)
            continue
        assert "@" not in image and ":" in image, f"{name}: no tag in {image!r}"
        tag = image.rsplit(":", 1)[1]
        assert PATCH_TAG.match(tag), f"{name}: {image!r} is not pinned to a patch version"
    base = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base == ["python:3.11.14-slim-bookworm"] or all(
        re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", b) for b in base
    ), base


@pytest.mark.parametrize(
    ("tag", "pinned"),
    [
        ("7.4.8", True),
        ("v2.53.5", True),
        ("3.11.14-slim-bookworm", True),
        ("7.4", False),  # a moving minor tag
        ("7", False),
        ("latest", False),
        ("3.11-slim", False),
    ],
)
def test_the_patch_version_check_tells_moving_tags(tag: str, pinned: bool) -> None:
    assert bool(PATCH_TAG.match(tag)) is pinned


def test_redis_is_a_release_with_the_lua_fix() -> None:
    services = load_config(profiles=ALL_PROFILES)["services"]
    redis_images = {
        name: s["image"] for name, s in services.items() if s["image"].startswith("redis:")
    }
    assert set(REDIS_SERVICES) | {"redis-cluster-init"} <= set(redis_images), redis_images
    for name, image in redis_images.items():
        found = PATCH_TAG.match(image.split(":", 1)[1])
        assert found, (name, image)
        version = tuple(int(part) for part in found.groups()[:3])
        assert version >= REDIS_AT_LEAST, f"{name}: {image} predates the fix of CVE-2025-49844"


def test_long_running_services_have_healthchecks_and_every_service_limits() -> None:
    services = load_config(profiles=ALL_PROFILES)["services"]
    long_running = [n for n, s in services.items() if str(s.get("restart", "no")) in LONG_RUNNING]
    assert {"kafka", "redis", "worker", "exporter", "ingest", *MONITORING_SERVICES} <= set(
        long_running
    )
    for name in long_running:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} needs a healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), (name, check["test"])
    for name, service in services.items():
        limits = (service.get("deploy") or {}).get("resources", {}).get("limits", {})
        memory = service.get("mem_limit") or limits.get("memory")
        cpus = service.get("cpus") or limits.get("cpus")
        assert memory and cpus, f"{name} needs a memory and a CPU limit"


def test_redis_and_kafka_are_only_on_the_backend_network() -> None:
    config = load_config(profiles=ALL_PROFILES)
    services = config["services"]
    assert config["networks"]["backend"].get("internal") is True, "backend: no way out"
    for name in (*REDIS_SERVICES, "redis-cluster-init", "kafka"):
        assert networks_of(services[name]) == {"backend"}, (name, services[name].get("networks"))
        assert not services[name].get("ports"), f"{name} must publish no port"
    for name in MONITORING_SERVICES:
        assert "backend" not in networks_of(services[name]), name
        assert "monitoring" in networks_of(services[name]), name
    # what Prometheus scrapes is on both
    for name in ("worker", "exporter"):
        assert networks_of(services[name]) == {"backend", "monitoring"}, name
    for name, service in services.items():
        assert networks_of(service), f"{name} is on the default network"


def test_redis_wants_a_password_and_keeps_its_state() -> None:
    config = load_config(profiles=ALL_PROFILES)
    source = compose_source()["services"]
    # the tracker's rules are docs/security.md's, which test_redis_acl.py runs a worker as
    (documented,) = re.findall(
        r"^user tracker on >\S+ (.+)$", (ROOT / "docs" / "security.md").read_text(), re.M
    )
    for name in REDIS_SERVICES:
        script = script_of(source[name])
        assert f"user tracker on >$tracker {documented}\n" in script, (documented, script)
        assert "user default off" in script, name
        assert re.search(r"^user tracker on >\$tracker ~rt:\* ", script, re.MULTILINE), script
        assert re.search(r"^user admin on >\$admin ", script, re.MULTILINE), script
        assert "/run/secrets/$1" in script and "redis-server" in script
        assert secrets_of(config["services"][name]) == {"redis_password", "redis_admin_password"}
        argv = as_argv(config["services"][name].get("command"))
        assert argv[argv.index("--maxmemory") + 1], argv
        assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction", argv
        assert "--requirepass" not in argv, "a password on the command line is visible to ps"
        assert "--user admin" in " ".join(as_argv(config["services"][name]["healthcheck"]["test"]))
    for name in ("worker", "exporter", "ingest", "demo"):
        service = config["services"][name]
        assert {"redis_password", "kafka_password", "metrics_token"} <= secrets_of(service), name
        assert "/run/secrets/redis_password" in script_of(source[name]), name
    assert "REDISCLI_AUTH" in script_of(source["redis-cluster-init"])


def test_kafka_wants_scram_from_every_client() -> None:
    services = load_config(profiles=ALL_PROFILES)["services"]
    kafka = as_env(services["kafka"]["environment"])
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in kafka["KAFKA_LISTENERS"].split(","):
        name, _, address = listener.partition("://")
        host = address.rsplit(":", 1)[0]
        # plaintext only where nothing outside the container reaches it
        assert protocols[name].startswith("SASL_") or host == "127.0.0.1", listener
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert "kafka_password" in secrets_of(services["kafka"])
    for name in ("worker", "exporter", "ingest", "demo"):
        env = as_env(services[name]["environment"])
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka_password", name
        assert "KAFKA_SASL_PASSWORD" not in env, name


def test_every_metrics_endpoint_wants_the_token_prometheus_presents() -> None:
    services = load_config(profiles=ALL_PROFILES)["services"]
    for name in ("worker", "exporter"):
        env = as_env(services[name]["environment"])
        assert env["RETENTION_METRICS_BEARER_TOKEN_FILE"] == "/run/secrets/metrics_token", name
    assert "metrics_token" in secrets_of(services["prometheus"])
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        if targets == ["localhost:9090"]:
            continue  # Prometheus's own, on its loopback
        auth = job.get("authorization") or {}
        assert auth.get("credentials_file") == "/run/secrets/metrics_token", job["job_name"]
        assert "credentials" not in auth, f"{job['job_name']}: the token belongs in a file"


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    config = load_config(profiles=ALL_PROFILES)
    for name, spec in config["secrets"].items():
        assert Path(spec["file"]).resolve().parent == ROOT / "secrets", name
    for name, service in config["services"].items():
        env = as_env(service.get("environment"))
        for key in env:
            if re.search(r"PASSWORD|TOKEN|SECRET", key) and not key.endswith("_FILE"):
                # only Grafana's admin password, from .env (test_compose_ops checks it)
                assert (name, key) == ("grafana", "GF_SECURITY_ADMIN_PASSWORD"), (name, key)
        assert not re.search(r"redis://[^/@\s]+:[^/@\s]+@", env.get("REDIS_URL", "")), name
    assert not re.search(r"(?i)(password|token)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9]{12,}", text)
    assert "requirepass" not in text and "--pass " not in text and " -a " not in text


def test_the_compose_redis_and_app_entrypoints_on_a_real_redis(tmp_path: Path) -> None:
    """The redis service's script on this machine's Redis, secrets from files: no client
    gets in without a user, the tracker's user reaches only its keys, and the tracker's
    entrypoint hands its command a REDIS_URL that logs in as it."""
    import redis as redis_client
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from retention import runtime

    def client(**login: str) -> redis_client.Redis:
        # a refusal is the answer here: no retries, which would only wait
        return redis_client.Redis(port=port, retry=Retry(NoBackoff(), 0), **login)

    source = compose_source()["services"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    passwords = {"redis_password": "t" * 8 + "0123456789", "redis_admin_password": "a-1_" * 5}
    for name, value in passwords.items():
        (secrets / name).write_text(value + "\n")
    stub = tmp_path / "bin" / "docker-entrypoint.sh"  # the image's: drops root, then execs
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\nshift\nexec {shlex.quote(runtime.redis_binary())} "$@"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}

    def sh(service: str, *args: str) -> list[str]:
        script = script_of(source[service]).replace("/run/secrets/", f"{secrets}/")
        return ["/bin/sh", "-c", script, *args]

    port = runtime.free_port()
    command = [str(a) for a in source["redis"]["command"]]
    command = [a.replace("${REDIS_MAXMEMORY:-1gb}", "64mb") for a in command]
    argv = sh("redis", "redis-server", *command, "--port", str(port), "--bind", "127.0.0.1")
    argv += ["--dir", str(tmp_path), "--appendonly", "no", "--save", ""]
    server = runtime.spawn("redis", argv, tmp_path / "logs", env)
    try:
        runtime.wait_for_port(port, 10, server.proc)
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert not any(p.encode() in cmdline for p in passwords.values()), cmdline

        with pytest.raises(redis_client.AuthenticationError):
            client().ping()
        tracker = client(username="tracker", password=passwords["redis_password"])
        assert tracker.set("rt:compose-check", 1)
        with pytest.raises(redis_client.exceptions.NoPermissionError):
            tracker.set("elsewhere", 1)
        assert tracker.info("memory")["maxmemory_policy"] == "noeviction"
        with pytest.raises(redis_client.exceptions.NoPermissionError):
            tracker.config_get("maxmemory")
        admin = client(username="admin", password=passwords["redis_admin_password"])
        assert admin.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}

        # the tracker's entrypoint: the URL its command sees logs in as the tracker
        shown = subprocess.run(
            sh("worker", "retention-entrypoint", "/bin/sh", "-c", 'echo "$REDIS_URL"'),
            env={**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        assert redis_client.Redis.from_url(shown).set("rt:compose-check", 2)
        assert shown.startswith("redis://tracker:"), "the URL should name the tracker's user"
        (secrets / "redis_password").unlink()
        missing = subprocess.run(
            sh("worker", "retention-entrypoint", "true"),
            env={**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert missing.returncode == 64 and "secrets/redis_password" in missing.stderr
    finally:
        server.stop()
