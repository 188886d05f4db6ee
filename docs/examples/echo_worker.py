"""A complete Ferryman worker on the kit: echoes a text back, one chunk per word.

Run it with `python docs/examples/echo_worker.py` (Kafka on $KAFKA_BOOTSTRAP_SERVERS).
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict
from pydantic_settings import SettingsConfigDict

from ferryman.contracts import ErrorCode, ErrorInfo
from ferryman_runtime.entry import run_worker
from ferryman_runtime.job import Job, RequestSpec
from ferryman_runtime.settings import WorkerSettings
from ferryman_runtime.worker import Worker


# The contract: what producers send and what they get back (pure pydantic).
class EchoRequested(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str
    shout: bool = False


class EchoChunk(BaseModel):
    index: int
    word: str


class EchoCompleted(BaseModel):
    text: str
    words: int


class EchoFailed(BaseModel):
    error: ErrorInfo


ECHO = RequestSpec(
    requests={"example.echo.requested": EchoRequested},
    failed_type="example.echo.failed",
    failed_model=EchoFailed,
    noun="echo request",
)


# The settings: the shared ones (topics, delivery, resilience) under this worker's prefix.
class EchoSettings(WorkerSettings):
    model_config = SettingsConfigDict(
        env_prefix="ECHO_WORKER_", extra="ignore", populate_by_name=True
    )
    group_id: str = "ferryman-echo-worker"
    request_topic: str = "echo.requests"
    default_reply_topic: str = "echo.results"


# The service: the work itself, ending every job with one terminal reply.
class EchoService:
    async def execute(self, job: Job[EchoRequested]) -> None:
        words = job.request.text.split()
        if not words:
            error = ErrorInfo(
                code=ErrorCode.INVALID_REQUEST, message="nothing to echo", retryable=False
            )
            await job.replies.fail(error)
            return
        for index, word in enumerate(words):
            word = word.upper() if job.request.shout else word
            await job.replies.emit("example.echo.chunk", EchoChunk(index=index, word=word))
        completed = EchoCompleted(text=" ".join(words), words=len(words))
        await job.replies.finish("example.echo.completed", completed)


def create_app(settings: EchoSettings) -> AsgiFastStream:
    worker = Worker(
        settings, name="echo_worker", spec=ECHO, service=EchoService(), registry=CollectorRegistry()
    )
    return worker.app()


if __name__ == "__main__":
    run_worker(EchoSettings, create_app)
