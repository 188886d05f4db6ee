"""SASL and TLS against real brokers: private local brokers whose only client listener is
SASL_PLAINTEXT (PLAIN and SCRAM) or SSL (with and without client certificates), started for
this module; the shared broker is not touched."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import pytest
from aiokafka.errors import KafkaConnectionError

from ferryman.cli import main as ferryman
from ferryman.codec import encode_binary
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher
from ferryman.topic_reader import read_topic_records
from ferryman.topics import ensure_topics
from tests.integration.conftest import free_port
from tests.tls_files import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "alice-Secret-42"
LOCAL_KAFKA = Path(__file__).resolve().parents[2] / "tools" / "kafka" / "local_kafka.py"


def load_local_kafka() -> ModuleType:
    spec = importlib.util.spec_from_file_location("local_kafka_for_sasl", LOCAL_KAFKA)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sasl_bootstrap(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SASL-only broker on fresh ports, with the jars of the shared local broker."""
    del kafka_bootstrap  # the shared broker's jars are resolved first; that broker is left alone
    local_kafka = load_local_kafka()
    home = tmp_path_factory.mktemp("sasl-kafka")
    port = free_port()
    bootstrap = local_kafka.ensure_running(
        port,
        home,
        120,
        controller_port=free_port(),
        sasl_users={USER: PASSWORD},
        libs_home=local_kafka.default_home(),
    )
    try:
        yield bootstrap
    finally:
        local_kafka.stop(home, port)


def connection(bootstrap: str, mechanism: str, password: str = PASSWORD) -> KafkaConnection:
    return KafkaConnection.model_validate(
        {
            "bootstrap_servers": bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_username": USER,
            "sasl_password": password,
        }
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_topics_are_created_written_and_read_with_good_credentials(
    sasl_bootstrap: str, unique: str, mechanism: str
) -> None:
    good = connection(sasl_bootstrap, mechanism)
    topic = f"t-{unique}.secure"
    await ensure_topics(good, [topic], partitions=2, replication_factor=1)
    publisher = KafkaPublisher(
        good.bootstrap_servers, client_id="test", connection=good.security_options()
    )
    await publisher.start()
    try:
        await publisher.send_and_wait(topic, b"hello", key=b"k", headers=[("h", b"1")])
    finally:
        await publisher.stop()

    records = [record async for record in read_topic_records(good, topic)]

    assert [(r.key, r.value, r.headers) for r in records] == [(b"k", b"hello", [("h", b"1")])]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_a_wrong_password_fails_at_connect(sasl_bootstrap: str, mechanism: str) -> None:
    bad = connection(sasl_bootstrap, mechanism, password="wrong")

    async with asyncio.timeout(30):
        with pytest.raises(KafkaConnectionError):
            await ensure_topics(bad, ["never-created"], partitions=1, replication_factor=1)


async def test_a_plaintext_client_cannot_use_the_sasl_listener(sasl_bootstrap: str) -> None:
    async with asyncio.timeout(60):
        with pytest.raises((KafkaConnectionError, LookupError)):
            _ = [r async for r in read_topic_records(sasl_bootstrap, "anything")]


async def test_the_cli_reads_credentials_from_the_environment(
    sasl_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    good = connection(sasl_bootstrap, "SCRAM-SHA-256")
    topic = f"t-{unique}.cli"
    await ensure_topics(good, [topic], partitions=1, replication_factor=1)
    publisher = KafkaPublisher(sasl_bootstrap, client_id="test", connection=good.security_options())
    await publisher.start()
    try:
        headers, value = encode_binary(
            {"id": "e-1", "type": "demo.event", "source": "/t", "datacontenttype": "text/plain"},
            b"hi",
        )
        await publisher.send_and_wait(topic, value, key=None, headers=headers)
    finally:
        await publisher.stop()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", USER)
    args = ["tail", topic, "--from-beginning", "-b", sasl_bootstrap]

    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    assert await asyncio.to_thread(ferryman, args) == 0
    shown = capsys.readouterr()
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "not-" + PASSWORD)
    assert await asyncio.to_thread(ferryman, args) == 1
    refused = capsys.readouterr()

    assert "demo.event\tid=e-1" in shown.out
    assert "cannot connect to Kafka" in refused.err
    assert "SCRAM-SHA-256 as alice" in refused.err
    assert PASSWORD not in refused.err + refused.out
    assert os.environ["KAFKA_SASL_PASSWORD"] not in refused.err


def test_the_shared_broker_still_serves_plaintext(
    kafka_bootstrap: str, sasl_bootstrap: str
) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)

    assert sasl_bootstrap != kafka_bootstrap
    assert load_local_kafka().broker_count(host, int(port)) > 0


async def test_a_worker_consumes_and_answers_over_sasl_without_leaking_the_password(
    sasl_bootstrap: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry

    from ferryman.codec import header_value
    from ferryman_runtime.worker import Worker
    from tests.integration.test_worker_kit import echo

    settings = echo.EchoSettings(
        kafka_bootstrap_servers=sasl_bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username=USER,
        kafka_sasl_password=PASSWORD,
        request_topic=f"t-{unique}.echo.requests",
        default_reply_topic=f"t-{unique}.echo.results",
        group_id=f"g-{unique}",
        topic_partitions=1,
        instance_id=unique,
    )
    worker = Worker(
        settings,
        name="echo_worker",
        spec=echo.ECHO,
        service=echo.EchoService(),
        registry=CollectorRegistry(),
    )
    good = connection(sasl_bootstrap, "SCRAM-SHA-256")
    await worker.start()
    publisher = KafkaPublisher(
        good.bootstrap_servers, client_id="test", connection=good.security_options()
    )
    await publisher.start()
    try:
        attributes = {
            "id": "s1",
            "type": "example.echo.requested",
            "source": "/test",
            "datacontenttype": "application/json",
        }
        headers, value = encode_binary(attributes, b'{"text": "over sasl"}')
        await publisher.send_and_wait(settings.request_topic, value, key=b"s1", headers=headers)
        replies: list[object] = []
        async with asyncio.timeout(30):
            while not replies:
                records = [
                    r
                    async for r in read_topic_records(good, settings.default_reply_topic)
                    if header_value(r.headers, "ce_type") == "example.echo.completed"
                ]
                replies.extend(records)
    finally:
        await publisher.stop()
        await worker.stop()

    assert len(replies) == 1
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in caplog.text


# TLS: private brokers whose only client listener is SSL, one of them requiring client
# certificates (mutual TLS), with throw-away certificates made by openssl.


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


class SslBroker(NamedTuple):
    bootstrap: str
    server_log: Path


@contextlib.contextmanager
def ssl_broker(
    tmp_path_factory: pytest.TempPathFactory, files: TlsFiles, *, client_auth: bool
) -> Iterator[SslBroker]:
    local_kafka = load_local_kafka()
    home = tmp_path_factory.mktemp("mtls-kafka" if client_auth else "ssl-kafka")
    port = free_port()
    bootstrap = local_kafka.ensure_running(
        port,
        home,
        120,
        controller_port=free_port(),
        ssl_listener=local_kafka.SslListener(files.broker_keystore, files.ca, client_auth),
        libs_home=local_kafka.default_home(),
    )
    try:
        yield SslBroker(bootstrap, home / "logs" / "server.log")
    finally:
        local_kafka.stop(home, port)


@pytest.fixture(scope="module")
def ssl_bootstrap(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[str]:
    """An SSL-only broker (no client certificates asked) on fresh ports."""
    del kafka_bootstrap  # resolves the shared broker's jars first; that broker is left alone
    with ssl_broker(tmp_path_factory, tls_files, client_auth=False) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="module")
def mtls_broker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[SslBroker]:
    """An SSL-only broker that requires a client certificate signed by the test CA."""
    del kafka_bootstrap
    with ssl_broker(tmp_path_factory, tls_files, client_auth=True) as broker:
        yield broker


def failed_authentications(server_log: Path) -> int:
    """How many TLS handshakes the broker has refused so far (its log names each one)."""
    text = server_log.read_text(errors="replace") if server_log.exists() else ""
    return sum(
        "Failed authentication" in line and "(SSL handshake failed)" in line
        for line in text.splitlines()
    )


async def round_trip(connection: KafkaConnection, topic: str) -> list[tuple[object, ...]]:
    """Create `topic`, publish one record to it and return what reading it back yields."""
    await ensure_topics(connection, [topic], partitions=2, replication_factor=1)
    publisher = KafkaPublisher(
        connection.bootstrap_servers, client_id="test", connection=connection.security_options()
    )
    await publisher.start()
    try:
        await publisher.send_and_wait(topic, b"hello", key=b"k", headers=[("h", b"1")])
    finally:
        await publisher.stop()
    return [(r.key, r.value, r.headers) async for r in read_topic_records(connection, topic)]


async def test_topics_are_created_written_and_read_over_tls(
    ssl_bootstrap: str, tls_files: TlsFiles, unique: str
) -> None:
    tls = KafkaConnection(
        bootstrap_servers=ssl_bootstrap, security_protocol="SSL", ssl_cafile=str(tls_files.ca)
    )

    records = await round_trip(tls, f"t-{unique}.tls")

    assert records == [(b"k", b"hello", [("h", b"1")])]


async def test_mutual_tls_works_with_a_client_certificate(
    mtls_broker: SslBroker, tls_files: TlsFiles, unique: str
) -> None:
    mtls = KafkaConnection(
        bootstrap_servers=mtls_broker.bootstrap,
        security_protocol="SSL",
        ssl_cafile=str(tls_files.ca),
        ssl_certfile=str(tls_files.client_cert),
        ssl_keyfile=str(tls_files.client_key),
    )

    records = await round_trip(mtls, f"t-{unique}.mtls")

    assert records == [(b"k", b"hello", [("h", b"1")])]


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_broker: SslBroker, tls_files: TlsFiles
) -> None:
    anonymous = KafkaConnection(
        bootstrap_servers=mtls_broker.bootstrap,
        security_protocol="SSL",
        ssl_cafile=str(tls_files.ca),
    )
    failed_before = failed_authentications(mtls_broker.server_log)

    async with asyncio.timeout(30):
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            await ensure_topics(anonymous, ["never-created"], partitions=1, replication_factor=1)

    # TLS 1.3 sends the broker's "certificate required" alert after the handshake, so the
    # client only sees the connection close; the broker's log names the reason (the broker
    # may write that line just after the client gives up, hence the bounded wait).
    async with asyncio.timeout(10):
        while failed_authentications(mtls_broker.server_log) <= failed_before:
            await asyncio.sleep(0.1)


async def test_a_broker_certificate_from_another_ca_fails_at_connect(
    ssl_bootstrap: str,
    tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker test earlier in the session may have throttled aiokafka's repeated
    # "Unable connect" line (ferryman_runtime.log_throttle); this test needs to see it.
    monkeypatch.setattr(logging.getLogger("aiokafka"), "filters", [])
    distrustful = KafkaConnection(
        bootstrap_servers=ssl_bootstrap,
        security_protocol="SSL",
        ssl_cafile=str(tls_files.other_ca),
    )

    async with asyncio.timeout(30):
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            await ensure_topics(distrustful, ["never-created"], partitions=1, replication_factor=1)

    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
