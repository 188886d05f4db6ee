"""Pipelines run automatically on upload: after a put, copy or move writes an object under
one of its tenant's `on_upload` prefixes, a `process` request for it goes to the worker's
own request topic, so the run survives a crash and is retried like any request.

The request's id is derived from the object's version (and the pipeline), so a redelivered
put asks for the same run again, which the worker recognises as a duplicate or, later,
answers with the reused outputs. Derived objects never trigger pipelines (no loops): they
are written by runs, not puts, and an object carrying lineage (a copy of a derived object)
is skipped too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from ferryman.codec import encode_binary
from ferryman.contracts.events import EXT_REPLY_TO, EXT_TENANT
from ferryman.contracts.storage import (
    STORAGE_PROCESS_REQUESTED,
    CopyCompleted,
    ObjectInfo,
    ProcessRequest,
    PutCompleted,
)
from ferryman.publisher import KafkaPublisher
from storage_worker.policy import TenantRule

TRIGGER_SOURCE = "/ferryman/storage-worker/on-upload"
"""The `ce_source` of the requests of automatic runs (shared by every replica, so the
duplicate of a run asked for by another replica is recognised too)."""


class UploadTriggers:
    """Asks for the `on_upload` pipelines of written objects.

    Args:
        publisher: the worker's publisher (None before it started).
        request_topic: the worker's request topic.
        reply_topic: where the automatic runs' replies go.
    """

    def __init__(
        self,
        publisher: Callable[[], KafkaPublisher | None],
        *,
        request_topic: str,
        reply_topic: str,
    ) -> None:
        self._publisher = publisher
        self._request_topic = request_topic
        self._reply_topic = reply_topic
        self.requested = 0

    async def written(self, tenant: str, rule: TenantRule, completed: BaseModel) -> None:
        """After a request completed: ask for the runs its written object triggers.

        Raises:
            aiokafka.errors.KafkaError: a request was not acknowledged (the write's request
                is then retried, and asks again).
        """
        if not isinstance(completed, PutCompleted | CopyCompleted) or not rule.on_upload:
            return
        written = completed.object
        if written.lineage is not None:
            return
        publisher = self._publisher()
        if publisher is None:
            return
        for trigger in rule.on_upload:
            if written.key.startswith(trigger.prefix):
                await self._request(publisher, tenant, written, trigger.pipeline)

    async def _request(
        self, publisher: KafkaPublisher, tenant: str, written: ObjectInfo, pipeline: str
    ) -> None:
        request_id = run_id(tenant, written, pipeline)
        attributes: dict[str, Any] = {
            "id": request_id,
            "type": STORAGE_PROCESS_REQUESTED,
            "source": TRIGGER_SOURCE,
            "datacontenttype": "application/json",
            "subject": written.key,
            EXT_TENANT: tenant,
            EXT_REPLY_TO: self._reply_topic,
        }
        request = ProcessRequest(key=written.key, backend=written.backend, pipeline=pipeline)
        headers, value = encode_binary(
            attributes, request.model_dump_json(exclude_none=True).encode()
        )
        await publisher.send_and_wait(
            self._request_topic, value, key=request_id.encode(), headers=headers
        )
        self.requested += 1


def run_id(tenant: str, written: ObjectInfo, pipeline: str) -> str:
    """The id of the automatic run of `pipeline` on this version of `written`."""
    version = written.version or written.etag or (written.checksum and written.checksum.value)
    identity = "\0".join((tenant, written.backend, written.key, version or "", pipeline))
    return "on-upload-" + hashlib.sha256(identity.encode()).hexdigest()[:32]
