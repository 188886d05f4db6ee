"""compose.yaml runs Kafka in KRaft mode, creates the topics, then starts the worker."""

from __future__ import annotations

from pathlib import Path

import yaml

from storage_worker.policy import parse_policy, space_of

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
