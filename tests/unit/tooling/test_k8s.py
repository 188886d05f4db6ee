"""deploy/k8s: each kustomization renders (`kubectl kustomize`), every object is valid for
Kubernetes 1.31 (kubernetes-validate, strict) or for KEDA's ScaledObject schema (vendored
under tests/ops/schemas), and the manifests agree with the workers' settings."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from ferryman.kafka_config import KafkaConnection
from ferryman_runtime.settings import WorkerSettings
from llm_worker.settings import LlmWorkerSettings
from mcp_worker.settings import McpWorkerSettings
from storage_worker.settings import StorageWorkerSettings
from tests.unit.tooling.promql_names import ROOT, families, metric_names_in

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {"base": K8S / "base", "managed-kafka": K8S / "overlays" / "managed-kafka"}
KEDA_SCHEMA = ROOT / "tests" / "ops" / "schemas" / "keda-scaledobject-v1alpha1.json"
KUBERNETES_VERSION = "1.31.0"
REQUEST_TOPIC_PARTITIONS = 12  # what compose's kafka-init creates; replicas beyond sit idle

WORKERS: dict[str, tuple[str, str, type[WorkerSettings]]] = {
    "llm-worker": ("llm_worker", "LLM_WORKER_", LlmWorkerSettings),
    "mcp-worker": ("mcp_worker", "MCP_WORKER_", McpWorkerSettings),
    "storage-worker": ("storage_worker", "STORAGE_WORKER_", StorageWorkerSettings),
}


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` produces for an overlay (skips without kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is missing: kustomizations cannot be rendered")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS[overlay])],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def raw_base_objects() -> list[dict[str, Any]]:
    """The base's resource files as written (no kubectl needed)."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / "base" / name).read_text())
        if doc
    ]


def validate(obj: dict[str, Any]) -> None:
    """Raises if `obj` is not a valid object of its kind."""
    if obj["kind"] == "ScaledObject":
        jsonschema.validate(obj, json.loads(KEDA_SCHEMA.read_text()))
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def worker_config(
    objects: tuple[dict[str, Any], ...], deployment: dict[str, Any]
) -> dict[str, str]:
    """Every variable the worker container gets from ConfigMaps, by name."""
    config_maps = by_kind(objects, "ConfigMap")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid(overlay: str) -> None:
    objects = rendered(overlay)

    assert {obj["kind"] for obj in objects} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "ConfigMap",
    }
    for obj in objects:
        validate(obj)


def test_the_base_files_are_valid_without_kubectl() -> None:
    for obj in raw_base_objects():
        validate(obj)


def test_the_validators_refuse_a_misspelt_field() -> None:
    deployment, scaled_object = (
        next(o for o in raw_base_objects() if o["kind"] == kind)
        for kind in ("Deployment", "ScaledObject")
    )
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    scaled_object["spec"]["triggers"][0]["metricType"] = "Average"

    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled_object)


@pytest.mark.parametrize("name", WORKERS)
def test_probes_ports_and_grace_match_the_worker_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered("base")
    deployment = by_kind(objects, "Deployment")[name]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    _, prefix, settings_class = WORKERS[name]
    config = worker_config(objects, deployment)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    settings = settings_class()  # the ConfigMaps' values parse

    own = {key.removeprefix(prefix).lower() for key in config if key.startswith(prefix)}
    assert own <= settings_class.model_fields.keys(), "a variable the worker would ignore"
    (port,) = container["ports"]
    assert port["containerPort"] == settings.http_port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port["containerPort"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert pod["spec"]["terminationGracePeriodSeconds"] == settings.grace_period + 10
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("name", WORKERS)
def test_service_and_disruption_budget_select_the_worker_pods(name: str) -> None:
    objects = rendered("base")
    pod_labels = by_kind(objects, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
    service = by_kind(objects, "Service")[name]
    budget = by_kind(objects, "PodDisruptionBudget")[name]

    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert budget["spec"]["maxUnavailable"] == 1  # a single replica can still be drained


@pytest.mark.parametrize("name", WORKERS)
def test_keda_scales_each_worker_on_its_own_consumer_lag(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered("base")
    deployment = by_kind(objects, "Deployment")[name]
    scaled = by_kind(objects, "ScaledObject")[name]["spec"]
    service, _, settings_class = WORKERS[name]
    for key, value in worker_config(objects, deployment).items():
        monkeypatch.setenv(key, value)
    max_in_flight = settings_class().max_in_flight
    (trigger,) = scaled["triggers"]
    query = trigger["metadata"]["query"]

    assert scaled["scaleTargetRef"]["name"] == name
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"] <= REQUEST_TOPIC_PARTITIONS
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    assert query == f'sum(ferryman_kafka_consumer_lag_messages{{service="{service}"}})'
    assert metric_names_in(query) <= families().keys()
    assert int(trigger["metadata"]["threshold"]) == math.floor(0.7 * max_in_flight)


def test_managed_kafka_uses_sasl_ssl_with_credentials_from_a_secret() -> None:
    objects = rendered("managed-kafka")
    kafka = next(
        cm["data"]
        for name, cm in by_kind(objects, "ConfigMap").items()
        if name.startswith("ferryman-kafka")
    )

    assert kafka["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert "KAFKA_SASL_PASSWORD" not in kafka
    KafkaConnection(  # the kit accepts the combination once the Secret supplies the rest
        bootstrap_servers=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        security_protocol=kafka["KAFKA_SECURITY_PROTOCOL"],
        sasl_mechanism=kafka["KAFKA_SASL_MECHANISM"],
        sasl_username="user",
        sasl_password=SecretStr("secret"),
    )
    deployments = by_kind(objects, "Deployment")
    assert deployments.keys() == WORKERS.keys()
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        secrets = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
        assert "ferryman-kafka-credentials" in secrets
        assert worker_config(objects, deployment)["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_the_base_connects_in_plaintext_and_takes_keys_from_optional_secrets() -> None:
    objects = rendered("base")

    for name, deployment in by_kind(objects, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        secrets = [s["secretRef"] for s in container["envFrom"] if "secretRef" in s]
        assert secrets == [{"name": f"{name}-secrets", "optional": True}]
        assert worker_config(objects, deployment)["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
