"""An in-memory `ObjectStorage`: objects per tenant and backend, a text pipeline, and a
record of every operation asked of it (for the resolver's unit tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import Lineage, ObjectInfo, ObjectRef, ProcessCompleted

DEFAULT_BACKEND = "local"


@dataclass
class Stored:
    info: ObjectInfo
    data: bytes


@dataclass
class FakeObjectStorage:
    """Objects live in `(tenant, backend, key)` slots: a tenant sees only its own.

    `extracted` maps a key to the text the `text` pipeline extracts from it (a key missing
    there: the pipeline gives no text output). `signing` lists the backends that sign URLs.
    `failures` makes an operation fail; `hang` makes every operation wait for it.
    """

    signing: set[str] = field(default_factory=set[str])
    extracted: dict[str, str] = field(default_factory=dict[str, str])
    failures: dict[str, FerrymanError] = field(default_factory=dict[str, FerrymanError])
    hang: asyncio.Event | None = None
    calls: list[tuple[str, str, str | None]] = field(
        default_factory=list[tuple[str, str, str | None]]
    )
    """(operation, key, tenant) of every call, in order."""
    read_limits: list[int] = field(default_factory=list[int])
    _objects: dict[tuple[str | None, str, str], Stored] = field(
        default_factory=dict[tuple[str | None, str, str], Stored]
    )

    def add(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        tenant: str | None = "acme",
        backend: str = DEFAULT_BACKEND,
        lineage: Lineage | None = None,
    ) -> ObjectInfo:
        info = ObjectInfo(
            backend=backend, key=key, size=len(data), content_type=content_type, lineage=lineage
        )
        self._objects[(tenant, backend, key)] = Stored(info, data)
        return info

    async def head(self, ref: ObjectRef, *, tenant: str | None, timeout: float) -> ObjectInfo:
        return (await self._find("head", ref, tenant)).info

    async def read(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, limit: int
    ) -> bytes:
        self.read_limits.append(limit)
        return (await self._find("read", ref, tenant)).data[:limit]

    async def presign(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, expires_in: int
    ) -> str | None:
        stored = await self._find("presign", ref, tenant)
        if stored.info.backend not in self.signing:
            return None
        return f"https://signed.example/{stored.info.key}?expires={expires_in}"

    async def process(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, pipeline: str
    ) -> ProcessCompleted:
        stored = await self._find("process", ref, tenant)
        outputs: list[ObjectInfo] = []
        text = self.extracted.get(stored.info.key)
        if text is not None:
            lineage = Lineage(source_key=stored.info.key, pipeline=pipeline, step="extract_text")
            outputs.append(
                self.add(
                    f".derived/{stored.info.key}/text.txt",
                    text.encode(),
                    "text/plain; charset=utf-8",
                    tenant=tenant,
                    backend=stored.info.backend,
                    lineage=lineage,
                )
            )
        return ProcessCompleted(source=stored.info, pipeline=pipeline, outputs=outputs)

    def operations(self) -> list[str]:
        return [operation for operation, _, _ in self.calls]

    async def _find(self, operation: str, ref: ObjectRef, tenant: str | None) -> Stored:
        self.calls.append((operation, ref.key, tenant))
        if self.hang is not None:
            await self.hang.wait()
        if (failure := self.failures.get(operation)) is not None:
            raise failure
        stored = self._objects.get((tenant, ref.backend or DEFAULT_BACKEND, ref.key))
        if stored is None:
            raise FerrymanError(
                ErrorCode.NOT_FOUND, f"no object {ref.key!r}", retryable=False, upstream="storage"
            )
        return stored
