"""Runs a pipeline on one object (`process` requests): the source spooled once, each step in
order in a worker thread, each step's output stored as a derived object with lineage (and
a `created` event with cause `process`), or reused when current. A failing step fails the
run with the step named; the source is never written, and a step's output is stored whole
or not at all."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from pydantic import BaseModel, TypeAdapter, ValidationError

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import (
    STORAGE_PROCESS_COMPLETED,
    ObjectInfo,
    ProcessCompleted,
    ProcessRequest,
)
from ferryman_runtime.job import Job
from storage_worker.backends.port import ObjectStore, StoredObject
from storage_worker.events import ObjectEvents
from storage_worker.keys import KeyRefused, normalise_key
from storage_worker.object_info import REQUEST_META, object_info, request_marker
from storage_worker.pipelines.config import BUILTIN_PIPELINES, PipelineConfig, pipeline_named
from storage_worker.pipelines.derived import Origin, derived_key
from storage_worker.pipelines.source import RunProgress, file_body, file_sha256, spooled
from storage_worker.pipelines.steps import STEPS, Source, StepResult, output_extension
from storage_worker.policy import Policy, TenantSpace, space_of, tenant_name
from storage_worker.stores import Stores

logger = logging.getLogger(__name__)

FACTS_META = "ferryman-lineage-facts"
"""The facts of the step that made a derived object (given again when it is reused)."""
_FACTS = TypeAdapter(dict[str, str])


PARALLEL_STEPS = 2
"""Pipeline steps running at once in one worker, by default."""


class StepFailed(FerrymanError):
    """A pipeline step failed: `error`'s code and message, and the step's name.

    Args:
        step: the step's name in its pipeline.
        error: what went wrong.
    """

    def __init__(self, step: str, error: FerrymanError) -> None:
        super().__init__(
            error.code,
            error.message,
            retryable=error.retryable,
            upstream=error.upstream,
            status=error.status,
            retry_after=error.retry_after,
        )
        self.step = step


class PipelineRunner:
    """Runs the policy's (and the built-in) pipelines.

    Args:
        stores: the open backends.
        policy: the active policy.
        events: publishes the derived objects' `created` events.
        scratch: where sources and outputs are spooled (default: the system's temp folder).
        parallel_steps: steps running at once in this worker (each holds a thread: the
            rest of the worker's file and DNS work shares those threads).
        on_step: called with each step's kind and outcome (`completed`, `reused`, or the
            error code of a failed step).
    """

    def __init__(
        self,
        *,
        stores: Stores,
        policy: Callable[[], Policy],
        events: ObjectEvents,
        scratch: Path | None = None,
        parallel_steps: int = PARALLEL_STEPS,
        on_step: Callable[[str, str], None] = lambda _kind, _outcome: None,
    ) -> None:
        self._on_step = on_step
        self._stores = stores
        self._policy = policy
        self._events = events
        self._scratch = scratch
        self._step_slots = asyncio.Semaphore(parallel_steps)

    async def process(self, request: ProcessRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        """Run `request.pipeline` on `request.key`.

        Raises:
            StepFailed: a step failed (its name, the error of the taxonomy).
            FerrymanError: `invalid_request` (an unknown pipeline, a refused key),
                `not_found` (no such object), the backend's errors.
        """
        policy = self._policy()
        space = space_of(policy, tenant_name(job.tenant), request.backend)
        pipeline = pipeline_named(policy.pipelines, request.pipeline)
        if pipeline is None:
            known = sorted({*policy.pipelines, *BUILTIN_PIPELINES})
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"there is no pipeline {request.pipeline!r} (there are {', '.join(known)})",
                retryable=False,
            )
        key = _checked(request.key)
        store = await self._stores.get(space.backend)
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "ferryman-", self._scratch))
        try:
            progress = RunProgress(job.replies)
            run = _Run(
                self._events, space, store, job, request, pipeline, progress, self._step_slots
            )
            run.on_step = self._on_step
            return STORAGE_PROCESS_COMPLETED, await run.steps(key, folder)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)


class _Run:
    """One run of one pipeline on one object."""

    def __init__(
        self,
        events: ObjectEvents,
        space: TenantSpace,
        store: ObjectStore,
        job: Job[Any],
        request: ProcessRequest,
        pipeline: PipelineConfig,
        progress: RunProgress,
        step_slots: asyncio.Semaphore,
    ) -> None:
        self._events = events
        self._space = space
        self._store = store
        self._job = job
        self._request = request
        self._pipeline = pipeline
        self._progress = progress
        self._step_slots = step_slots
        self.on_step: Callable[[str, str], None] = lambda _kind, _outcome: None
        """Told each step's kind and outcome."""
        self._marker = request_marker(job.event.source, job.event.id)
        """Names this request on its outputs (a redelivery recognises its own)."""

    async def steps(self, key: str, folder: Path) -> ProcessCompleted:
        stored, source = await spooled(
            self._store, self._space.full_key(key), key, folder, self._progress
        )
        facts: dict[str, str] = {}
        outputs: list[ObjectInfo] = []
        reused: list[bool] = []
        for step in self._pipeline.steps:
            name = step.step_name
            await self._progress.report(name, 0, source.size)
            try:
                step_facts, output, was_reused = await self._step(step, stored, source, folder)
            except FerrymanError as exc:
                self.on_step(step.step, str(exc.code))
                raise StepFailed(name, exc) from None
            except KafkaError:
                raise  # an event not published: the request runs again
            except Exception as exc:  # a library's bug on odd input: named, not a crash
                logger.exception("pipeline step %s failed unexpectedly", name)
                self.on_step(step.step, str(ErrorCode.INTERNAL))
                raise StepFailed(
                    name,
                    FerrymanError(
                        ErrorCode.INTERNAL,
                        f"{name} failed unexpectedly ({type(exc).__name__})",
                        retryable=False,
                    ),
                ) from exc
            self.on_step(step.step, "reused" if was_reused else "completed")
            facts.update({f"{name}.{fact}": value for fact, value in step_facts.items()})
            if output is not None:
                outputs.append(output)
                reused.append(was_reused)
            await self._progress.report(name, source.size, source.size)
        return ProcessCompleted(
            source=object_info(self._space, stored),
            pipeline=self._request.pipeline,
            outputs=outputs,
            facts=facts,
            reused=bool(reused) and all(reused),
        )

    async def _step(
        self, step: Any, stored: StoredObject, source: Source, folder: Path
    ) -> tuple[dict[str, str], ObjectInfo | None, bool]:
        name: str = step.step_name
        extension = output_extension(step)
        origin = Origin(
            source_key=source.key,
            source_version=stored.version or stored.etag,
            source_sha256=source.sha256,
            pipeline=self._request.pipeline,
            pipeline_version=self._pipeline.version,
            step=name,
            step_config=step.digest(),
        )
        target = None
        if extension is not None:
            target = _checked(derived_key(source.key, self._request.pipeline, name, extension))
            if not self._request.force:
                current = await self._current(target, origin)
                if current is not None:
                    facts, found = current
                    info = object_info(self._space, found)
                    if found.metadata.get(REQUEST_META) == self._marker:
                        # A redelivery of the request that made it: its event again, in
                        # case the first run stopped before publishing it.
                        await self._events.created(
                            self._space.tenant, info, "process", self._job.event.id
                        )
                    return facts, info, True
        scratch = folder / name
        await asyncio.to_thread(scratch.mkdir)
        async with self._step_slots:
            result: StepResult = await asyncio.to_thread(STEPS[step.step], step, source, scratch)
        if result.output is None or target is None:
            return result.facts, None, False
        digest = await asyncio.to_thread(file_sha256, result.output.path)
        written = await self._store.put(
            self._space.full_key(target),
            file_body(result.output.path),
            content_type=result.output.content_type,
            metadata={
                **origin.metadata(),
                FACTS_META: json.dumps(result.facts),
                REQUEST_META: self._marker,
            },
            tags={},
            sha256=digest,
        )
        info = object_info(self._space, written)
        await self._events.created(self._space.tenant, info, "process", self._job.event.id)
        return result.facts, info, False

    async def _current(
        self, target: str, origin: Origin
    ) -> tuple[dict[str, str], StoredObject] | None:
        """The facts and description of `target` when an earlier run made it from this very
        source version, pipeline version and step configuration."""
        try:
            found = await self._store.head(self._space.full_key(target))
        except FerrymanError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise
        if not origin.made(found.metadata):
            return None
        try:
            facts = _FACTS.validate_json(found.metadata.get(FACTS_META, "{}"))
        except ValidationError:
            return None  # not of this worker's making: made again
        return facts, found


def _checked(key: str) -> str:
    try:
        return normalise_key(key)
    except KeyRefused as exc:
        raise FerrymanError(ErrorCode.INVALID_REQUEST, str(exc), retryable=False) from None
