"""The policy file: the backends, and each tenant's space on them (a bucket or root, a
prefix) with its limits. A tenant never reaches outside its prefix.

```yaml
backends:
  local: {type: local, root: /var/lib/ferryman/storage}
  s3:
    type: s3
    bucket: acme-documents
    region: eu-west-1
    access_key_id: env:S3_KEY_ID            # references, never values
    secret_access_key: env:S3_SECRET
tenants:
  acme:
    default: s3
    spaces: {s3: "tenants/acme/", local: "acme/"}
    max_object_bytes: 104857600
    content_types: ["application/pdf", "image/*", "text/*"]
    max_presign_seconds: 3600
    sources: {schemes: [https], hosts: ["*.example.com"], allow_private: false}
    on_upload: [{prefix: "inbox/", pipeline: documents}]   # see storage_worker.pipelines
  "*":                                      # every other tenant
    spaces: {local: "{tenant}/"}
pipelines:
  documents: {version: "1", steps: [{step: checksum}, {step: detect}, {step: extract_text}]}
```

Tenants match by `fnmatch` pattern, the first match in file order; `{tenant}` in a prefix is
the tenant's name. A request without a tenant is the tenant `default`.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.references import REFERENCE_PATTERN
from storage_worker.pipelines.config import (
    BUILTIN_PIPELINES,
    PipelineConfig,
    PipelineName,
    UploadTrigger,
)

DEFAULT_TENANT = "default"
_TENANT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")


class PolicyError(ValueError):
    """The policy file is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalBackend(_Strict):
    """Files under `root` (the embedded default)."""

    type: Literal["local"] = "local"
    root: Path


Reference = Annotated[str, Field(pattern=f"^{REFERENCE_PATTERN}$")]


class S3Backend(_Strict):
    """A bucket on S3 or an S3-compatible store (MinIO, R2)."""

    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    region: str = "us-east-1"
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    access_key_id: Reference | None = None
    secret_access_key: Reference | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"


class GcsBackend(_Strict):
    """A Google Cloud Storage bucket."""

    type: Literal["gcs"]
    bucket: str = Field(min_length=3, max_length=222)
    service_account_file: Reference | None = None
    """A reference to a service-account key's JSON (`file:/…` or `env:…`); without one,
    the default credentials (and no signed URLs)."""
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    """An emulator (gcp-storage-emulator, fake-gcs-server): requests go without credentials."""


class AzureBackend(_Strict):
    """A container on Azure Blob Storage (or Azurite): a connection string, or an account
    URL with the account's key; both references (`env:`/`file:`), never values."""

    type: Literal["azure"]
    container: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
    account_url: str | None = Field(default=None, pattern=r"^https?://")
    connection_string: Reference | None = None
    account_name: str | None = Field(default=None, pattern=r"^[a-z0-9]{3,24}$")
    """None: taken from the account URL."""
    account_key: Reference | None = None
    api_version: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    """The `x-ms-version` to send (None: the SDK's newest); e.g. `2025-11-05` for Azurite
    3.35."""

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        if (self.connection_string is None) == (self.account_url is None):
            raise ValueError("give either connection_string or account_url")
        if self.account_url is not None and self.account_key is None:
            raise ValueError("account_url needs account_key")
        if self.connection_string is not None and (self.account_key or self.account_name):
            raise ValueError("a connection string names the account and its key itself")
        if "--" in self.container:
            raise ValueError("container names have no two dashes in a row")
        return self


Backend = Annotated[
    LocalBackend | S3Backend | GcsBackend | AzureBackend, Field(discriminator="type")
]


class RequestLimit(_Strict):
    """Requests per window and requests at once."""

    requests: int | None = Field(default=None, gt=0)
    window: float = Field(default=60.0, gt=0, le=86_400)
    max_concurrent: int | None = Field(default=None, gt=0)


class SourceAccess(_Strict):
    """The URLs a tenant's puts may fetch content from (`PutRequest.source`)."""

    schemes: list[Literal["http", "https"]] = Field(default=["https"], min_length=1)
    hosts: list[str] = Field(min_length=1)
    """Host names (`fnmatch`, lowercase: `*.example.com`, `files.partner.io`)."""
    allow_private: bool = False
    """Let the hosts resolve to loopback and private addresses (never link-local, as the
    cloud metadata service, multicast, reserved or unspecified ones)."""


class TenantRule(_Strict):
    """One tenant pattern's spaces and limits."""

    spaces: dict[str, str] = Field(min_length=1)
    """Backend name → the tenant's prefix on it (`{tenant}` is the tenant's name)."""
    default: str | None = None
    """The backend of requests that name none (default: the first space)."""
    max_object_bytes: int | None = Field(default=None, ge=1)
    content_types: list[str] | None = None
    """Allowed content types (`fnmatch`, e.g. `image/*`), as detected from the bytes."""
    max_presign_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    rate_limit: RequestLimit | None = None
    """Requests of each tenant matching the pattern, shared by the replicas (each enforces
    its share); past it, requests fail `rate_limited` with the wait as `retry_after`."""
    sources: SourceAccess | None = None
    """Where puts from a source URL may fetch from (None: nowhere)."""
    on_upload: list[UploadTrigger] = Field(default_factory=list[UploadTrigger])
    """Pipelines run on every object written under a prefix (`storage_worker.pipelines`)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for backend, prefix in self.spaces.items():
            if prefix and not prefix.endswith("/"):
                raise ValueError(f"spaces.{backend}: a prefix ends with / (got {prefix!r})")
            if prefix.startswith("/") or ".." in prefix.split("/"):
                raise ValueError(f"spaces.{backend}: {prefix!r} is not a relative prefix")
        if self.default is not None and self.default not in self.spaces:
            raise ValueError(f"default {self.default!r} is not one of the spaces")
        return self


class Policy(_Strict):
    """The whole file."""

    backends: dict[str, Backend] = Field(min_length=1)
    tenants: dict[str, TenantRule] = Field(min_length=1)
    pipelines: dict[PipelineName, PipelineConfig] = Field(default_factory=dict[str, PipelineConfig])
    """Named pipelines (besides the built-in `text` and `thumbnail`, which these replace)."""

    @model_validator(mode="after")
    def _known_backends(self) -> Self:
        for pattern, rule in self.tenants.items():
            unknown = sorted(set(rule.spaces) - set(self.backends))
            if unknown:
                raise ValueError(f"tenants.{pattern}: unknown backends {unknown}")
            for index, trigger in enumerate(rule.on_upload):
                if trigger.pipeline not in self.pipelines | BUILTIN_PIPELINES:
                    raise ValueError(
                        f"tenants.{pattern}.on_upload.{index}.pipeline: no pipeline"
                        f" {trigger.pipeline!r}"
                    )
        return self


class TenantSpace:
    """Where one tenant's objects are on one backend, and its limits."""

    def __init__(
        self, tenant: str, backend: str, prefix: str, rule: TenantRule, pattern: str = "*"
    ) -> None:
        self.tenant = tenant
        self.pattern = pattern
        """The policy's tenant pattern that matched."""
        self.backend = backend
        self.prefix = prefix
        self.rule = rule

    def full_key(self, key: str) -> str:
        """The backend's key of a (normalised) key of the tenant."""
        return self.prefix + key

    def own_key(self, full_key: str) -> str:
        """The tenant's key of a backend key (inside its prefix)."""
        return full_key[len(self.prefix) :]


def tenant_name(tenant: str | None) -> str:
    """The request's tenant (`default` without one).

    Raises:
        FerrymanError: `permission_denied` for a name that cannot be a folder name.
    """
    name = tenant or DEFAULT_TENANT
    if not _TENANT.fullmatch(name) or name in (".", ".."):
        raise FerrymanError(
            ErrorCode.PERMISSION_DENIED,
            f"tenant {name[:100]!r} is not a valid tenant name",
            retryable=False,
        )
    return name


def space_of(policy: Policy, tenant: str, backend: str | None) -> TenantSpace:
    """The tenant's space on `backend` (None: its default).

    Raises:
        FerrymanError: `permission_denied` when the tenant has no space there (or at all).
    """
    for pattern, rule in policy.tenants.items():
        if fnmatch.fnmatchcase(tenant, pattern):
            name = backend or rule.default or next(iter(rule.spaces))
            prefix = rule.spaces.get(name)
            if prefix is None:
                raise FerrymanError(
                    ErrorCode.PERMISSION_DENIED,
                    f"tenant {tenant!r} has no space on backend {name!r}",
                    retryable=False,
                )
            return TenantSpace(tenant, name, prefix.replace("{tenant}", tenant), rule, pattern)
    raise FerrymanError(
        ErrorCode.PERMISSION_DENIED, f"tenant {tenant!r} has no storage", retryable=False
    )


def default_policy(root: Path) -> Policy:
    """Without a policy file: the local backend under `root`, each tenant in its folder."""
    return Policy(
        backends={"local": LocalBackend(root=root)},
        tenants={"*": TenantRule(spaces={"local": "{tenant}/"})},
    )


def parse_policy(data: bytes, origin: str = "policy file") -> Policy:
    """Parse a policy file (YAML or JSON).

    Raises:
        PolicyError: not YAML/JSON, or invalid; the message names the field.
    """
    try:
        document: Any = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{origin} is not YAML or JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PolicyError(f"{origin} must be a mapping with backends and tenants")
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise PolicyError(f"{origin}: {problems}") from None
