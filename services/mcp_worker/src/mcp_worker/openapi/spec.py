"""Loading and validating OpenAPI documents (3.0 and 3.1) into an :class:`ApiSpec`.

External ``$ref``s are bundled into the document at load time so everything
downstream (validation, tool generation, hashing) works on one self-contained
document: each external file is stored under the root key
``x-ferryman-external`` and every reference to it is rewritten to a local
pointer. That keeps cycles across files harmless (a file is loaded once) and
makes the digest change when any referenced file changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator

EXTERNAL_KEY = "x-ferryman-external"

UrlFetcher = Callable[[str], bytes]


@dataclass(frozen=True)
class ApiSpec:
    """A validated, self-contained OpenAPI document.

    Attributes:
        source: Where the document came from (path or URL), for messages.
        document: The bundled document (external refs rewritten to local ones).
        openapi: The ``openapi`` field, e.g. ``"3.1.0"``.
        title: ``info.title``.
        version: ``info.version``.
        digest: sha256 hex of the canonical JSON of ``document``.
        server_url: ``servers[0].url`` if the document declares servers.
    """

    source: str
    document: dict[str, Any] = field(repr=False)
    openapi: str
    title: str
    version: str
    digest: str
    server_url: str | None = None


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` deterministically (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_document(data: bytes, *, source: str) -> dict[str, Any]:
    """Parse JSON or YAML bytes into a mapping.

    Raises:
        ValueError: if the bytes are neither JSON nor YAML, or not a mapping.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not UTF-8 text ({exc.reason})") from None
    try:
        parsed: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(
                f"{source}: neither valid JSON nor YAML ({_first_line(str(exc))})"
            ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{source}: the document must be a mapping, got {type(parsed).__name__}")
    return parsed  # pyright: ignore[reportUnknownVariableType]


def load_spec(
    data: bytes,
    *,
    source: str,
    base_dir: Path | None = None,
    fetch_url: UrlFetcher | None = None,
    base_url: str | None = None,
) -> ApiSpec:
    """Parse, bundle and validate an OpenAPI 3.0/3.1 document.

    Args:
        data: The document bytes (JSON or YAML).
        source: Where it came from; named in every error.
        base_dir: Directory relative file ``$ref``s are resolved against. Without
            it, external file refs are refused. Refs may not leave this directory.
        fetch_url: Fetches an ``http(s)`` ``$ref`` target. Without it, URL refs
            are refused (the caller decides whether the network is allowed).
        base_url: Where the document was fetched from: its relative ``$ref``s are
            resolved against it (and fetched with ``fetch_url``).

    Raises:
        ValueError: unparseable input, unsupported version, an external ref that
            is refused or cannot be loaded, or a document that fails validation
            (the message names ``source`` and the first problem).
    """
    document = parse_document(data, source=source)
    version = document.get("openapi")
    if not isinstance(version, str) or not version.startswith(("3.0", "3.1")):
        found = document.get("openapi") or document.get("swagger") or "none"
        raise ValueError(
            f"{source}: only OpenAPI 3.0 and 3.1 are supported (found version {found!r})"
        )
    bundler = _Bundler(source=source, base_dir=base_dir, fetch_url=fetch_url, base_url=base_url)
    bundled = bundler.bundle(document)
    validator = OpenAPIV31SpecValidator if version.startswith("3.1") else OpenAPIV30SpecValidator
    error = next(iter(validator(bundled).iter_errors()), None)
    if error is not None:
        where = "/".join(_escape_pointer(str(part)) for part in getattr(error, "path", ()) or ())
        location = f" at /{where}" if where else ""
        raise ValueError(
            f"{source}: invalid OpenAPI {version} document{location}: "
            f"{_first_line(str(error.message))}"
        )
    info: dict[str, Any] = bundled.get("info") or {}
    servers: list[Any] = bundled.get("servers") or []
    server_url = servers[0].get("url") if servers and isinstance(servers[0], dict) else None
    return ApiSpec(
        source=source,
        document=bundled,
        openapi=version,
        title=str(info.get("title", "")),
        version=str(info.get("version", "")),
        digest=hashlib.sha256(canonical_json(bundled)).hexdigest(),
        server_url=server_url if isinstance(server_url, str) else None,
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class _Bundler:
    """Rewrites external ``$ref``s into ``#/x-ferryman-external/<key>/...``."""

    def __init__(
        self,
        *,
        source: str,
        base_dir: Path | None,
        fetch_url: UrlFetcher | None,
        base_url: str | None = None,
    ) -> None:
        self._source = source
        self._base_url = base_url
        self._base_dir = base_dir.resolve() if base_dir is not None else None
        self._fetch_url = fetch_url
        self._external: dict[str, Any] = {}
        self._keys: dict[str, str] = {}

    def bundle(self, document: dict[str, Any]) -> dict[str, Any]:
        if EXTERNAL_KEY in document:
            raise ValueError(f"{self._source}: the root key {EXTERNAL_KEY!r} is reserved")
        root_location = self._base_url or (
            str(self._base_dir / "__root__") if self._base_dir is not None else None
        )
        rewritten = self._rewrite(document, location=root_location, prefix="")
        if self._external:
            rewritten[EXTERNAL_KEY] = self._external
        return rewritten

    def _rewrite(self, node: Any, *, location: str | None, prefix: str) -> Any:
        if isinstance(node, list):
            return [self._rewrite(item, location=location, prefix=prefix) for item in node]  # pyright: ignore[reportUnknownVariableType]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():  # pyright: ignore[reportUnknownVariableType]
            if key == "$ref" and isinstance(value, str):
                out[key] = self._rewrite_ref(value, location=location, prefix=prefix)
            else:
                out[str(key)] = self._rewrite(value, location=location, prefix=prefix)  # pyright: ignore[reportUnknownArgumentType]
        return out

    def _rewrite_ref(self, ref: str, *, location: str | None, prefix: str) -> str:
        target, _, fragment = ref.partition("#")
        if not target:
            return f"#{prefix}{fragment}" if prefix else ref
        key = self._load(target, location=location)
        return f"#/{EXTERNAL_KEY}/{_escape_pointer(key)}{fragment}"

    def _load(self, target: str, *, location: str | None) -> str:
        scheme = urlsplit(target).scheme
        parent_scheme = urlsplit(location).scheme if location else ""
        if scheme in ("http", "https") or parent_scheme in ("http", "https"):
            absolute = target if scheme else _join_url(location or "", target)
            return self._load_url(absolute)
        if scheme:
            raise ValueError(
                f"{self._source}: $ref {target!r} uses an unsupported scheme {scheme!r}"
            )
        if self._base_dir is None or location is None:
            raise ValueError(
                f"{self._source}: external $ref {target!r} needs a base directory "
                "to resolve relative files"
            )
        path = (Path(location).parent / unquote(target)).resolve()
        if not path.is_relative_to(self._base_dir):
            raise ValueError(f"{self._source}: $ref {target!r} points outside the spec directory")
        key = path.relative_to(self._base_dir).as_posix()
        if key not in self._keys:
            self._keys[key] = key
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ValueError(
                    f"{self._source}: cannot read $ref {target!r}: {exc.strerror}"
                ) from None
            self._store(key, data, location=str(path))
        return key

    def _load_url(self, url: str) -> str:
        if self._fetch_url is None:
            raise ValueError(
                f"{self._source}: $ref {url!r} is a URL and URL refs are not allowed for this API"
            )
        if url not in self._keys:
            self._keys[url] = url
            self._store(url, self._fetch_url(url), location=url)
        return url

    def _store(self, key: str, data: bytes, *, location: str) -> None:
        self._external[key] = None  # placeholder so a cycle back to this file stops here
        loaded = parse_document(data, source=f"{self._source} -> {key}")
        prefix = f"/{EXTERNAL_KEY}/{_escape_pointer(key)}"
        self._external[key] = self._rewrite(loaded, location=location, prefix=prefix)


def _join_url(base: str, target: str) -> str:
    from urllib.parse import urljoin

    return urljoin(base, target)
