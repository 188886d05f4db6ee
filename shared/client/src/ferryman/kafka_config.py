"""How to reach and authenticate to Kafka: bootstrap servers, SASL and TLS.

Every Kafka client the project builds (workers, `FerrymanClient`, the CLI, topic
creation, dead-letter replay) takes a `KafkaConnection` and passes
`aiokafka_options()` to aiokafka.

```python
connection = KafkaConnection.from_env(os.environ)  # KAFKA_BOOTSTRAP_SERVERS, KAFKA_SASL_…
consumer = AIOKafkaConsumer(**connection.aiokafka_options(), group_id=None)
```
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Literal, Self

from aiokafka.helpers import create_ssl_context  # pyright: ignore[reportMissingTypeStubs]
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"

_ENV_FIELDS = {
    "BOOTSTRAP_SERVERS": "bootstrap_servers",
    "SECURITY_PROTOCOL": "security_protocol",
    "SASL_MECHANISM": "sasl_mechanism",
    "SASL_USERNAME": "sasl_username",
    "SASL_PASSWORD": "sasl_password",
    "SSL_CAFILE": "ssl_cafile",
    "SSL_CERTFILE": "ssl_certfile",
    "SSL_KEYFILE": "ssl_keyfile",
    "SSL_PASSWORD": "ssl_password",
    "CLIENT_ID": "client_id",
}


class KafkaConnection(BaseModel):
    """Where the brokers are and how to authenticate to them.

    `SASL_*` protocols need a mechanism, a username and a password; `SSL` and `SASL_SSL`
    verify the brokers against `ssl_cafile` (the system trust store when unset) and present
    `ssl_certfile`/`ssl_keyfile` as the client certificate (mTLS) when given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    bootstrap_servers: str = Field(default=DEFAULT_BOOTSTRAP_SERVERS, min_length=1)
    """Comma-separated `host:port` list."""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    """PEM file of the CAs that sign the brokers' certificates."""
    ssl_certfile: str | None = None
    """PEM client certificate (mTLS); may also hold the key."""
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    """Password of an encrypted `ssl_keyfile`."""
    client_id: str | None = None
    """Names the client in broker logs and quotas; each component has a default."""

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if sasl:
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"{self.security_protocol} needs {', '.join(missing)}")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(
                f"SASL settings are given but security_protocol is {self.security_protocol}; "
                "use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
            )
        given_tls = [
            name
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
            if getattr(self, name) is not None
        ]
        if given_tls and not tls:
            raise ValueError(
                f"{', '.join(given_tls)} given but security_protocol is {self.security_protocol}"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        return self

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        prefix: str = "KAFKA_",
        *,
        overrides: Mapping[str, str | None] | None = None,
    ) -> KafkaConnection:
        """Read `<prefix>BOOTSTRAP_SERVERS`, `<prefix>SECURITY_PROTOCOL`,
        `<prefix>SASL_MECHANISM`, `<prefix>SASL_USERNAME`, `<prefix>SASL_PASSWORD`,
        `<prefix>SSL_CAFILE`, `<prefix>SSL_CERTFILE`, `<prefix>SSL_KEYFILE`,
        `<prefix>SSL_PASSWORD` and `<prefix>CLIENT_ID`; empty values count as unset.
        `overrides` (by field name, e.g. `bootstrap_servers`) win over the environment;
        None values among them are ignored.

        Raises:
            pydantic.ValidationError: the settings are inconsistent (the message names the
                settings, never their values).
        """
        values = {
            field: value
            for suffix, field in _ENV_FIELDS.items()
            if (value := environ.get(prefix + suffix, "").strip())
        }
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        if "security_protocol" in values:
            values["security_protocol"] = values["security_protocol"].upper()
        if "sasl_mechanism" in values:
            values["sasl_mechanism"] = values["sasl_mechanism"].upper()
        return cls.model_validate(values)

    @classmethod
    def coerce(cls, target: str | KafkaConnection) -> KafkaConnection:
        """Return `target` as a connection (a string is a PLAINTEXT bootstrap list)."""
        return target if isinstance(target, KafkaConnection) else cls(bootstrap_servers=target)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for `SSL`/`SASL_SSL`, or None for the plaintext protocols.

        Raises:
            OSError: a certificate or key file cannot be read.
            ssl.SSLError: a file is not valid PEM, or the key does not match / decrypt.
        """
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        password = self.ssl_password.get_secret_value() if self.ssl_password else None
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=password,
        )
        return context

    def security_options(self) -> dict[str, Any]:
        """The protocol, SASL and TLS part of `aiokafka_options()` (what `KafkaPublisher`
        takes as `connection`: it sets servers and client id itself).

        Raises:
            OSError: a certificate or key file cannot be read.
            ssl.SSLError: a file is not valid PEM, or the key does not match / decrypt.
        """
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    def aiokafka_options(self, default_client_id: str | None = None) -> dict[str, Any]:
        """Keyword arguments for `AIOKafkaProducer`, `AIOKafkaConsumer` and
        `AIOKafkaAdminClient`: servers, protocol, SASL credentials, TLS context, and
        `client_id` (the configured one, else `default_client_id` when given).

        Raises:
            OSError: a certificate or key file cannot be read.
            ssl.SSLError: a file is not valid PEM, or the key does not match / decrypt.
        """
        options = {"bootstrap_servers": self.bootstrap_servers, **self.security_options()}
        client_id = self.client_id or default_client_id
        if client_id is not None:
            options["client_id"] = client_id
        return options
