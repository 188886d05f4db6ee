"""compose.yaml runs Kafka in KRaft mode, creates the topics, then starts the workers, with
Prometheus, Grafana and Jaeger beside them; compose.managed-kafka.yaml points the workers at a
managed Kafka (SASL_SSL) instead. Validated by `docker compose config` where the plugin exists
and structurally everywhere."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from pydantic import AliasChoices

from ferryman.cli import connection_from
from ferryman_runtime.settings import WorkerSettings
from llm_worker.settings import LlmWorkerSettings
from mcp_worker.settings import McpWorkerSettings
from storage_worker.policy import parse_policy, space_of
from storage_worker.settings import StorageWorkerSettings
from tests.unit.tooling import compose_merge
from tests.unit.tooling.promql_names import run_promtool

ROOT = Path(__file__).resolve().parents[3]


def test_compose_starts_kafka_then_topics_then_the_worker_built_from_its_dockerfile() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    kafka, init, worker = services["kafka"], services["kafka-init"], services["llm-worker"]

    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "llm.requests" in init["command"][0]
    assert "ferryman.health" in init["command"][0]  # workers do not create topics here
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"


def test_the_storage_worker_runs_with_the_example_policy_its_topics_and_a_data_volume() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    worker = compose["services"]["storage-worker"]
    topics = compose["services"]["kafka-init"]["command"][0]

    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert worker["environment"]["STORAGE_WORKER_CREATE_TOPICS"] == "false"
    for topic in ("storage.requests", "storage.results", "storage.requests.dlq", "storage.events"):
        assert topic in topics
    mounted = {volume.split(":")[1] for volume in worker["volumes"]}
    assert mounted == {"/etc/ferryman/storage-policy.yaml", "/var/lib/ferryman/storage"}
    assert "storage-data" in compose["volumes"]

    policy = parse_policy((ROOT / "docs/examples/storage-policy.yaml").read_bytes())
    space = space_of(policy, "acme", None)
    assert (space.backend, space.full_key("a.txt")) == ("local", "acme/a.txt")


# --- the whole stack: observability services, healthchecks, and a structural validation ---

WORKERS = {
    "llm-worker": ("llm_worker", LlmWorkerSettings, "LLM_WORKER_"),
    "mcp-worker": ("mcp_worker", McpWorkerSettings, "MCP_WORKER_"),
    "storage-worker": ("storage_worker", StorageWorkerSettings, "STORAGE_WORKER_"),
}


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source (a named volume, or a repository path for a bind mount)."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def port_of(entry: str) -> tuple[int | None, int]:
    """(host port or None, container port) of a `ports` entry."""
    *host, container = str(entry).split(":")
    return (int(host[-1]) if host else None, int(container.split("/")[0]))


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="no docker compose plugin here")
@pytest.mark.parametrize(
    "files", [["compose.yaml"], ["compose.yaml", "compose.managed-kafka.yaml"]], ids=" + ".join
)
def test_docker_compose_accepts_the_files(files: list[str]) -> None:
    options = [option for name in files for option in ("-f", str(ROOT / name))]
    env_file = ["--env-file", str(ROOT / "deploy/compose/managed-kafka.env.example")]
    result = subprocess.run(
        ["docker", "compose", *env_file, *options, "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr


def test_every_service_has_an_image_or_a_dockerfile_and_valid_dependencies() -> None:
    services = load_compose()["services"]

    assert {"prometheus", "grafana", "jaeger"} <= services.keys()
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        else:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]), f"{name}: pin a tag"
        for target, dependency in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = dependency["condition"]
            assert condition in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"


def test_mounted_files_exist_and_named_volumes_are_declared() -> None:
    compose = load_compose()

    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source} at {target}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_published_host_ports_are_distinct() -> None:
    host_ports = [
        host
        for service in load_compose()["services"].values()
        for host, _ in map(port_of, service.get("ports", []))
        if host is not None
    ]

    assert len(host_ports) == len(set(host_ports))


@pytest.mark.parametrize("name", WORKERS)
def test_each_worker_has_a_health_check_grace_and_traces_to_jaeger(name: str) -> None:
    services = load_compose()["services"]
    worker = services[name]
    _, settings_class, prefix = WORKERS[name]
    port = next(container for _, container in map(port_of, worker["ports"]))
    environment = worker["environment"]

    assert f"http://127.0.0.1:{port}/health" in " ".join(worker["healthcheck"]["test"])
    grace = float(environment[f"{prefix}GRACE_PERIOD"])
    assert float(worker["stop_grace_period"].removesuffix("s")) >= grace + 10
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert 4318 in {container for _, container in map(port_of, services["jaeger"]["ports"])}
    assert environment[f"{prefix}CREATE_TOPICS"] == "false"
    assert settings_class.model_fields["http_port"].default in {port, 8080}


@pytest.mark.parametrize("name", WORKERS)
def test_kafka_init_creates_every_topic_the_worker_uses(name: str) -> None:
    created = set(re.findall(r"[\w.-]+", load_compose()["services"]["kafka-init"]["command"][0]))
    _, settings_class, _ = WORKERS[name]
    settings = settings_class(_env_file=None)
    topics = {
        value
        for field, value in settings.model_dump().items()
        if field.endswith("_topic") and isinstance(value, str) and value
    }

    assert topics - created == set()


def test_prometheus_scrapes_every_worker_with_its_service_label_and_loads_the_rules() -> None:
    compose = load_compose()
    prometheus = compose["services"]["prometheus"]
    config_dir = ROOT / mounts(prometheus)["/etc/prometheus"]
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert config["rule_files"] == ["ferryman.rules.yml"]
    for name, (service_label, _, _) in WORKERS.items():
        job = jobs[service_label]
        (discovery,) = job["dns_sd_configs"]
        worker_ports = {c for _, c in map(port_of, compose["services"][name]["ports"])}
        assert job["honor_labels"] is True
        assert discovery["names"] == [name]
        assert discovery["port"] in worker_ports
        assert {"target_label": "service", "replacement": service_label} in job["relabel_configs"]


def test_promtool_accepts_the_prometheus_config_and_its_rules() -> None:
    result = run_promtool("check", "config", ROOT / "deploy" / "prometheus" / "prometheus.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_grafana_provisions_the_dashboard_and_the_prometheus_and_jaeger_datasources() -> None:
    compose = load_compose()
    grafana = compose["services"]["grafana"]
    mounted = mounts(grafana)
    datasources_dir = ROOT / mounted["/etc/grafana/provisioning/datasources"]
    providers_dir = ROOT / mounted["/etc/grafana/provisioning/dashboards"]
    datasources = {
        source["type"]: source
        for path in datasources_dir.glob("*.yml")
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    (provider,) = [
        provider
        for path in providers_dir.glob("*.yml")
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    dashboards_dir = ROOT / mounted[provider["options"]["path"]]

    assert (dashboards_dir / "ferryman-fleet.json").is_file()
    assert grafana["image"].startswith("grafana/grafana:11.6")
    assert datasources["prometheus"]["url"] == "http://prometheus:9090"
    assert datasources["prometheus"]["isDefault"] is True
    assert datasources["jaeger"]["url"] == "http://jaeger:16686"
    assert {port_of(p)[1] for p in compose["services"]["jaeger"]["ports"]} >= {4317, 4318, 16686}


# --- compose.managed-kafka.yaml: the same stack against a managed Kafka (SASL_SSL) ---

MANAGED_KAFKA = ROOT / "compose.managed-kafka.yaml"
MANAGED_KAFKA_ENV = ROOT / "deploy" / "compose" / "managed-kafka.env.example"
KIT_PREFIXES = ("KAFKA_", "LLM_WORKER_", "MCP_WORKER_", "STORAGE_WORKER_", "OPENAI_")


def example_env() -> dict[str, str]:
    """The example env file as `docker compose --env-file` reads it."""
    return {key: value or "" for key, value in dotenv_values(MANAGED_KAFKA_ENV).items()}


def managed_compose() -> dict[str, Any]:
    return compose_merge.merge(
        compose_merge.load(ROOT / "compose.yaml"), compose_merge.load(MANAGED_KAFKA)
    )


def worker_environment(name: str, interpolation: dict[str, str]) -> dict[str, str]:
    """The container environment of one worker under both files, interpolated."""
    environment = managed_compose()["services"][name]["environment"]
    return {
        key: compose_merge.interpolate(str(value), interpolation)
        for key, value in environment.items()
    }


def kit_setting_aliases() -> set[str]:
    """Every variable name the kit's settings read without a prefix (`KAFKA_*`, …)."""
    aliases: set[str] = set()
    for field in WorkerSettings.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            aliases |= {c for c in field.validation_alias.choices if isinstance(c, str)}
    return {alias for alias in aliases if alias.isupper()}


def test_the_managed_kafka_override_starts_no_local_broker_and_nothing_waits_for_one() -> None:
    compose = managed_compose()
    active = compose_merge.active_services(compose)

    assert {"kafka", "kafka-init"} & active == set()
    assert set(WORKERS) | {"prometheus", "grafana", "jaeger"} <= active
    for name in active:
        assert set(compose["services"][name].get("depends_on", {})) <= active, name
    # the local stack is still whole with its profile
    assert {"kafka", "kafka-init"} <= compose_merge.active_services(compose, {"local-kafka"})


def test_the_override_sets_only_variables_the_kit_reads_and_takes_secrets_from_outside() -> None:
    override = compose_merge.load(MANAGED_KAFKA)
    text = MANAGED_KAFKA.read_text()

    for name in WORKERS:
        environment = override["services"][name]["environment"]
        assert set(environment) <= kit_setting_aliases(), name
        assert environment["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    for required in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        assert f"${{{required}:?" in text, f"{required} must be required, not defaulted"
    assert set(example_env()) <= kit_setting_aliases()


@pytest.mark.parametrize("missing", ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SASL_PASSWORD"])
def test_compose_refuses_to_start_without_the_managed_kafka_credentials(missing: str) -> None:
    interpolation = {k: v for k, v in example_env().items() if k != missing}

    with pytest.raises(compose_merge.InterpolationError, match=missing):
        worker_environment("llm-worker", interpolation)


@pytest.mark.parametrize("name", WORKERS)
def test_each_worker_and_the_cli_build_the_same_sasl_ssl_connection_from_the_override(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    interpolation = {**example_env(), "KAFKA_SASL_PASSWORD": "s3cr$t 'pw'"}
    environment = worker_environment(name, interpolation)
    for key in [k for k in os.environ if k.startswith(KIT_PREFIXES)]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    _, settings_class, _ = WORKERS[name]

    settings = settings_class(_env_file=None)
    connection = settings.kafka_connection()
    options = connection.aiokafka_options()

    assert connection.bootstrap_servers == interpolation["KAFKA_BOOTSTRAP_SERVERS"] != "kafka:19092"
    assert (connection.security_protocol, connection.sasl_mechanism) == ("SASL_SSL", "PLAIN")
    assert connection.sasl_username == interpolation["KAFKA_SASL_USERNAME"]
    assert options["sasl_plain_password"] == "s3cr$t 'pw'"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert "s3cr$t" not in repr(settings) + repr(connection)
    assert connection_from(argparse.Namespace(), environment) == connection
