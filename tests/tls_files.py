"""Throw-away PEM certificates for TLS tests, made with the openssl command.

`make_tls_files(directory)` writes a CA, a broker certificate for 127.0.0.1/localhost, a
client certificate signed by that CA, and a second, unrelated CA.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files `make_tls_files` writes."""

    ca: Path
    """The CA certificate that signs the broker and client certificates."""
    broker_keystore: Path
    """The broker's PKCS#8 key followed by its certificate (Kafka's PEM keystore layout)."""
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting only it must reject the broker."""


def _openssl(*args: str | Path) -> None:
    """Run openssl.

    Raises:
        subprocess.CalledProcessError: openssl failed (its output is in the exception).
    """
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, text=True)


def _self_signed_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", key, "-out", cert,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def _signed(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem"))
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
             "-out", csr)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
        "-days", "2", "-out", cert, "-extfile", ext,
    )  # fmt: skip
    return key, cert


def make_tls_files(directory: Path) -> TlsFiles:
    """Write fresh certificates into `directory` and return their paths.

    The broker certificate allows client authentication too, as Kafka connects to its own
    SSL listener with it (and so does `local_kafka`'s readiness probe).

    Raises:
        subprocess.CalledProcessError: openssl is missing a feature or failed.
        FileNotFoundError: there is no openssl command.
    """
    ca = _self_signed_ca(directory, "ferryman-test-ca")
    broker_key, broker_cert = _signed(
        directory,
        "broker",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    client_key, client_cert = _signed(
        directory, "ferryman-client", ca, "extendedKeyUsage=clientAuth\n"
    )
    keystore = directory / "broker-keystore.pem"
    keystore.write_text(broker_key.read_text() + broker_cert.read_text())
    _, other_ca = _self_signed_ca(directory, "unrelated-ca")
    return TlsFiles(ca[1], keystore, client_cert, client_key, other_ca)
