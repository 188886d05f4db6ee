"""Publishes a replica's health report as a `ferryman.health.reported` CloudEvent."""

from __future__ import annotations

from ferryman.contracts.events import HEALTH_REPORTED
from ferryman.contracts.health import HealthReport
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.side_events import publish_event


async def publish_health(
    publisher: KafkaPublisher, topic: str, report: HealthReport, *, source: str
) -> None:
    """Publish `report` to `topic` in binary mode, keyed by its instance, and wait for the ack.

    Keying by instance keeps one replica's reports in order on one partition.

    Raises:
        aiokafka.errors.KafkaError: the report was not acknowledged.
    """
    await publish_event(
        publisher,
        topic,
        HEALTH_REPORTED,
        report,
        key=report.instance,
        source=source,
        time=report.reported_at,
    )
