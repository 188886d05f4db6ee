"""Kafka connection settings: read from the environment, checked, made into aiokafka options."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from ferryman.kafka_config import KafkaConnection

PASSWORD = "pa55-w0rd-never-shown"


def test_the_defaults_are_a_local_plaintext_broker() -> None:
    options = KafkaConnection.from_env({}).aiokafka_options()

    assert options == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_scram_settings_from_the_environment() -> None:
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "b-1.example:9096,b-2.example:9096",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "app",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_CLIENT_ID": "orders",
        "KAFKA_SSL_CAFILE": "",
    }

    connection = KafkaConnection.from_env(environ)
    options = connection.aiokafka_options("fallback-id")

    assert options["bootstrap_servers"] == "b-1.example:9096,b-2.example:9096"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "app"
    assert options["sasl_plain_password"] == PASSWORD
    assert options["client_id"] == "orders"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert PASSWORD not in repr(connection)
    assert PASSWORD not in str(connection.model_dump())


def test_a_prefix_and_overrides_choose_where_settings_come_from() -> None:
    environ = {"WORKER_KAFKA_BOOTSTRAP_SERVERS": "env:9092", "KAFKA_BOOTSTRAP_SERVERS": "no:1"}

    connection = KafkaConnection.from_env(
        environ, "WORKER_KAFKA_", overrides={"bootstrap_servers": "flag:9092", "client_id": None}
    )

    assert connection.bootstrap_servers == "flag:9092"
    assert connection.client_id is None
    assert connection.aiokafka_options("cli")["client_id"] == "cli"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": PASSWORD},
            "SASL_SSL needs sasl_mechanism, sasl_username",
        ),
        (
            {"KAFKA_SASL_USERNAME": "app", "KAFKA_SASL_PASSWORD": PASSWORD},
            "SASL settings are given but security_protocol is PLAINTEXT",
        ),
        ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "ssl_cafile given but security_protocol is PLAINTEXT"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "/k.pem"},
            "ssl_keyfile needs ssl_certfile",
        ),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "PLAIN"),
    ],
)
def test_inconsistent_settings_are_refused_without_echoing_secrets(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        KafkaConnection.from_env(environ)

    assert PASSWORD not in str(caught.value)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mtls_files_make_a_context_and_a_wrong_key_password_fails_clearly(tmp_path: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=client",
        "-keyout", str(key), "-out", str(cert), "-passout", "pass:" + PASSWORD,
    )  # fmt: skip
    settings = {
        "security_protocol": "SSL",
        "ssl_cafile": str(cert),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }

    context = KafkaConnection.model_validate({**settings, "ssl_password": PASSWORD}).ssl_context()
    wrong = KafkaConnection.model_validate({**settings, "ssl_password": "nope"})

    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLError) as caught:
        wrong.ssl_context()
    assert PASSWORD not in str(caught.value)
    assert KafkaConnection().ssl_context() is None
