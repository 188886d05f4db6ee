"""One mcp_worker process under load: its registry file, its topics, the bench's publisher
and reply reader.

`McpWorkerSession` writes a registry with one server, `toolbox` (the in-repo toolbox over
streamable HTTP at a given URL, or over stdio started by the worker, unsandboxed), creates
fresh topics (`bench-<tag>.mcp.*`), starts `python -m mcp_worker` with `MCP_WORKER_*`
variables, waits for `/health` ready, and reads the reply topic itself (no group, pinned to
its end before anything is published), stamping per call the publish and the terminal
event seen (`time.monotonic()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil
from aiokafka import AIOKafkaConsumer

from ferryman.codec import encode_binary
from ferryman.contracts.mcp import MCP_TOOL_CALL_REQUESTED
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from tests.bench.procs import ROOT, free_port, http_json, spawn, stop
from tests.bench.session import Item, Req, pin_to_end
from tests.mcp_servers import toolbox_stdio

SERVER = "toolbox"
KEPT_FAILURES = 20
"""Distinct failure messages counted (the rest are counted under `other`)."""


class McpReplyReader:
    """Reads the reply topic; stamps each call's terminal event, counts failures by code and
    message (`ferryman.mcp.failed`) and tool errors (`is_error`)."""

    def __init__(self) -> None:
        self.reqs: dict[str, Req] = {}
        self.terminal = 0
        self.tool_errors = 0
        self.failures: Counter[str] = Counter()

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers)
                    req = self.reqs.get(headers.get("ce_correlationid", b"").decode())
                    kind = headers.get("ce_type", b"").decode().rsplit(".", 1)[-1]
                    if req is None or req.done is not None or kind not in ("completed", "failed"):
                        continue
                    req.done, req.failed = now, kind == "failed"
                    self.terminal += 1
                    value = record.value or b""
                    if req.failed:
                        error = json.loads(value).get("error", {})
                        reason = f"{error.get('code')}: {error.get('message')}"
                        known = reason in self.failures or len(self.failures) < KEPT_FAILURES
                        self.failures[reason if known else "other"] += 1
                    elif b'"is_error":true' in value.replace(b" ", b""):
                        self.tool_errors += 1


@dataclass(frozen=True)
class Toolbox:
    """Where the worker finds the toolbox: `url` for streamable HTTP, None for stdio."""

    transport: str
    url: str | None = None

    def registry_entry(self, max_concurrency: int) -> dict[str, Any]:
        """The toolbox's registry entry: no result cache (every call reaches the server),
        `max_concurrency` slots, started with the worker."""
        common = {"max_concurrency": max_concurrency, "cache": {"mode": "off"}, "start": "eager"}
        if self.url is not None:
            return {"type": "http", "url": self.url, **common}
        command, args = toolbox_stdio()
        return {"command": command, "args": args, "sandbox": "none", **common}


class McpWorkerSession:
    """A started mcp_worker plus the bench's Kafka client side; use `async with`."""

    def __init__(
        self, bootstrap: str, toolbox: Toolbox, *, max_in_flight: int, max_concurrency: int,
        partitions: int, log_level: str = "WARNING",
    ) -> None:  # fmt: skip
        self.bootstrap, self.toolbox, self.partitions = bootstrap, toolbox, partitions
        self.max_in_flight, self.max_concurrency = max_in_flight, max_concurrency
        self.log_level = log_level
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"bench-{self.tag}.mcp"
        self.req_topic, self.reply_topic = f"{self.prefix}.requests", f"{self.prefix}.results"
        self.reader = McpReplyReader()
        self.publisher = KafkaPublisher(bootstrap, client_id="ferryman-mcp-bench")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self._reader_task: asyncio.Task[None] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="mcp-bench-")
        self.log = Path(tempfile.gettempdir()) / f"mcp-bench-worker-{self.tag}.log"
        self.proc: Any = None
        self.process: psutil.Process | None = None
        self.health_url = ""

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _environment(self, registry: Path, port: int) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        settings = {"REGISTRY_FILE": str(registry), "REQUEST_TOPIC": self.req_topic,
                    "DEFAULT_REPLY_TOPIC": self.reply_topic,
                    "CONTROL_TOPIC": f"{self.prefix}.control",
                    "CATALOG_TOPIC": f"{self.prefix}.catalog",
                    "AUDIT_TOPIC": f"{self.prefix}.audit",
                    "HEALTH_TOPIC": f"{self.prefix}.health", "GROUP_ID": f"bench-{self.tag}",
                    "INSTANCE_ID": f"bench-{self.tag}", "HTTP_PORT": str(port),
                    "MAX_IN_FLIGHT": str(self.max_in_flight), "GRACE_PERIOD": "2",
                    "TOPIC_PARTITIONS": str(self.partitions), "LOG_LEVEL": self.log_level,
                    "PACKAGES_DIR": str(Path(self._dir.name) / "packages")}  # fmt: skip
        return {**inherited, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                **{f"MCP_WORKER_{k}": v for k, v in settings.items()}}  # fmt: skip

    async def _start(self) -> None:
        registry = Path(self._dir.name) / "registry.json"
        entry = self.toolbox.registry_entry(self.max_concurrency)
        registry.write_text(json.dumps({"mcpServers": {SERVER: entry}}))
        await ensure_topics(self.bootstrap, [self.req_topic, self.reply_topic],
                            partitions=self.partitions, replication_factor=1)  # fmt: skip
        port = free_port()
        self.health_url = f"http://127.0.0.1:{port}/health"
        with self.log.open("wb") as log:
            env = self._environment(registry, port)
            command = [sys.executable, "-m", "mcp_worker"]
            self.proc = spawn(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 90
        while not ((await self.health()) or {}).get("ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the mcp_worker did not get ready; see {self.log}")
            await asyncio.sleep(0.2)
        self.process = psutil.Process(self.proc.pid)
        await self.publisher.start()
        await self.consumer.start()
        await pin_to_end(self.consumer, self.reply_topic)
        self._reader_task = asyncio.create_task(self.reader.run(self.consumer))

    async def __aexit__(self, *_exc: object) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        for closing in (self.consumer.stop(), self.publisher.stop()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 10)
        if self.proc is not None:
            await asyncio.to_thread(stop, self.proc)
        self._dir.cleanup()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def health(self) -> dict[str, Any]:
        """The worker's `/health` document ({} when it does not answer)."""
        return (await asyncio.to_thread(http_json, self.health_url)) or {}

    def cpu(self) -> float:
        """The worker's own user + system CPU seconds so far (a stdio server is a separate
        process: not counted)."""
        assert self.process is not None
        return sum(self.process.cpu_times()[:2])

    def rss_mb(self) -> float:
        """The worker's resident set now, in MB."""
        assert self.process is not None
        return self.process.memory_info().rss / 2**20

    def connections_to(self, port: int) -> int:
        """The worker's established TCP connections to `port` on this host right now."""
        assert self.process is not None
        return sum(c.status == psutil.CONN_ESTABLISHED and bool(c.raddr) and c.raddr.port == port
                   for c in self.process.net_connections(kind="tcp"))  # fmt: skip

    def encode(self, count: int, tool: str, arguments: dict[str, Any]) -> list[Item]:
        """`count` fresh tool calls with unique ids, progress events off (encoded before a
        phase, outside its timing)."""
        body = json.dumps({"server": SERVER, "tool": tool, "arguments": arguments,
                           "progress": False}).encode()  # fmt: skip
        common = {"type": MCP_TOOL_CALL_REQUESTED, "source": "/ferryman/bench",
                  "datacontenttype": "application/json"}  # fmt: skip
        items: list[Item] = []
        for rid in (uuid.uuid4().hex for _ in range(count)):
            headers, value = encode_binary({**common, "id": rid}, body)
            items.append((rid, value, headers))
        return items

    async def send(self, item: Item) -> tuple[Req, asyncio.Future[Any]]:
        """Publish one call; its `Req` stamps and the future of Kafka's ack."""
        rid, value, headers = item
        self.reader.reqs[rid] = req = Req(sent=time.monotonic())
        future = await self.publisher.send(self.req_topic, value, key=rid.encode(),
                                           headers=headers)  # fmt: skip
        return req, future

    async def wait_terminal(self, target: int, timeout: float) -> None:
        """Until `target` terminal events were seen in all, the worker died, or `timeout`."""
        end = time.monotonic() + timeout
        while self.reader.terminal < target and time.monotonic() < end and self.alive:
            await asyncio.sleep(0.05)
