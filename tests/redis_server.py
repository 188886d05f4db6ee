"""A Redis for the test session (the LLM worker's shared response cache).

Where it comes from, in order: `REDIS_URL` if set; testcontainers' Redis when a Docker engine
answers; else `redis-server` from the system (`tools/setup_system.sh` installs Debian's) on a
free port, without persistence, stopped at the end. Without any of them the tests that need
it are skipped locally and fail under `CI`, so a missing install step cannot hide behind a
green run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

START_TIMEOUT = 20.0
"""Seconds `redis-server` may take to answer `PING`."""


class RedisUnavailable(RuntimeError):
    """No Redis can be had for the tests."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:  # pyright: ignore[reportUnknownMemberType]
            return bool(client.ping())  # pyright: ignore[reportUnknownMemberType]
    except redis.RedisError:
        return False


@contextlib.contextmanager
def local_redis(workdir: Path) -> Iterator[str]:
    """Run `redis-server` on a free port of 127.0.0.1 (no persistence); yield its URL.

    Raises:
        RedisUnavailable: `redis-server` is not installed, or does not answer in time.
    """
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        raise RedisUnavailable("redis-server is not installed (run tools/setup_system.sh)")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log = (workdir / f"redis-{port}.log").open("ab")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RedisUnavailable(f"redis-server did not answer on port {port}")
            time.sleep(0.05)  # polling a process that is starting: nothing to wait on
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@contextlib.contextmanager
def redis_for_tests(workdir: Path, docker: bool) -> Iterator[str]:
    """A Redis URL for the session: `REDIS_URL`, a container (when `docker`), or a local
    `redis-server`.

    Raises:
        RedisUnavailable: none of them is available.
    """
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return
    if docker:
        from testcontainers.redis import RedisContainer  # type: ignore[import-untyped]

        with RedisContainer("redis:7") as container:  # pyright: ignore[reportUnknownVariableType]
            host = container.get_container_host_ip()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            port = container.get_exposed_port(6379)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            yield f"redis://{host}:{port}/0"
        return
    with local_redis(workdir) as url:
        yield url
