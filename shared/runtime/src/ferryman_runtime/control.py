"""A control topic (cancels, approvals), read whole by every replica from `window` seconds
back, so a cancel published just before a replica started still applies to its request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from pydantic import ValidationError

from ferryman.codec import DecodeError, IncomingEvent, decode_event
from ferryman.kafka_config import KafkaConnection
from ferryman_runtime.topic_follower import FollowedRecord, TopicFollower

logger = logging.getLogger(__name__)


class ControlReader:
    """The control topic, read whole by every replica from `window` seconds back; decoded
    CloudEvents dispatched by type.

    Args:
        connection: the Kafka connection.
        topic: the control topic.
        window: seconds read back at start.
        handlers: event type → handler; events of other types are ignored. A handler's
            `ValidationError` (its event's data is invalid) is logged and the event skipped.
        client_id: names the consumer.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        *,
        window: float,
        handlers: Mapping[str, Callable[[IncomingEvent], None]],
        client_id: str,
    ) -> None:
        self._handlers = dict(handlers)
        self._follower = TopicFollower(
            connection,
            topic,
            on_record=self.dispatch,
            client_id=client_id,
            start="window",
            window=window,
        )
        self.ready = self._follower.ready
        """Set once positioned and the window read back."""
        self.seen = 0
        """Records read (decodable or not)."""

    @property
    def live(self) -> bool:
        """Positioned and reading (False between a failure and the restart)."""
        return self._follower.live

    async def run(self) -> None:
        """Read until cancelled, starting again after a failure (see `TopicFollower.run`)."""
        await self._follower.run()

    async def sync(self, timeout: float) -> None:
        """Return once every event published before this call was dispatched.

        Raises:
            TimeoutError: not within `timeout` seconds.
        """
        await self._follower.sync(timeout)

    def dispatch(self, record: FollowedRecord) -> None:
        """Decode one control topic record and hand it to its type's handler (what `run`
        does with every record; public so it can be fed without Kafka).

        Raises:
            Exception: whatever the handler raises besides `ValidationError`.
        """
        self.seen += 1
        try:
            event = decode_event(record.headers, record.value)
        except DecodeError as exc:
            logger.warning("undecodable control event skipped: %s", str(exc)[:200])
            return
        handler = self._handlers.get(event.type)
        if handler is None:
            return
        try:
            handler(event)
        except ValidationError as exc:
            logger.warning(
                "invalid %s event skipped: %s", event.type, str(exc).splitlines()[0][:200]
            )
