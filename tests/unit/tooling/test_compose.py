"""compose.yaml runs Kafka in KRaft mode, creates the topics, then starts the worker."""

from __future__ import annotations

from pathlib import Path

import yaml

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
