"""Publishes a replica's health report as a `ferryman.health.reported` CloudEvent."""

from __future__ import annotations

from typing import Any

from ferryman.codec import encode_binary
from ferryman.contracts.events import HEALTH_REPORTED
from ferryman.contracts.health import HealthReport
from ferryman.publisher import KafkaPublisher


async def publish_health(
    publisher: KafkaPublisher, topic: str, report: HealthReport, *, source: str
) -> None:
    """Publish `report` to `topic` in binary mode, keyed by its instance, and wait for the ack.

    Keying by instance keeps one replica's reports in order on one partition.

    Raises:
        aiokafka.errors.KafkaError: the report was not acknowledged.
    """
    attributes: dict[str, Any] = {
        "type": HEALTH_REPORTED,
        "source": source,
        "datacontenttype": "application/json",
        "time": report.reported_at,
    }
    headers, value = encode_binary(attributes, report.model_dump_json().encode())
    await publisher.send_and_wait(topic, value, key=report.instance.encode(), headers=headers)
