"""What a registry entry may ask the installers for: package names, versions or ranges, and
executable names, validated strictly so that a registry file cannot smuggle an installer
option, a URL, a local path or a VCS checkout into `uv pip install` or `npm install`.
"""

from __future__ import annotations

import hashlib
import json
import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

_PYPI_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
"""PEP 508 names; no extras, no URL, no marker."""

_NPM_NAME = re.compile(r"(?:@[a-z0-9~][a-z0-9._~-]*/)?[a-z0-9~][a-z0-9._~-]*")
"""npm's rules for new packages: lowercase, URL-safe, optionally scoped; no leading `.`,
`_` or `-` (a leading `-` would read as an option)."""
_NPM_RESERVED = frozenset({"node_modules", "favicon.ico"})

_SEMVER_PART = r"(?:0|[1-9][0-9]*|[xX*])"
_SEMVER_TAG = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_PARTIAL = rf"v?{_SEMVER_PART}(?:\.{_SEMVER_PART}){{0,2}}(?:-{_SEMVER_TAG})?(?:\+{_SEMVER_TAG})?"
_COMPARATOR = rf"(?:<=|>=|<|>|=|~|\^)?\s*{_PARTIAL}"
_COMPARATOR_SET = rf"(?:{_PARTIAL}\s+-\s+{_PARTIAL}|{_COMPARATOR}(?:\s+{_COMPARATOR})*)"
_NPM_RANGE = re.compile(rf"\s*{_COMPARATOR_SET}(?:\s*\|\|\s*{_COMPARATOR_SET})*\s*")
"""node-semver versions and ranges only: no dist-tag, `file:`, `git+`, URL, alias or path."""

_BIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
"""A file name, never a path: the executable must stay inside the installed environment."""


def pypi_requirement(name: str, version: str) -> str:
    """The PEP 508 requirement for `name` at `version` (a bare version pins with `==`).

    Raises:
        ValueError: the name is not a plain distribution name, or the version is neither a
            version nor a specifier set (URLs, paths, options, markers and `===` included).
    """
    if _PYPI_NAME.fullmatch(name) is None:
        raise ValueError(f"PyPI package name {name!r} is not a plain distribution name")
    spec = version.strip()
    if spec[:1].isdigit():
        try:
            Version(spec)
        except InvalidVersion:
            raise ValueError(f"PyPI version {version!r} is not a valid version") from None
        spec = f"=={spec}"
    if "===" in spec:
        raise ValueError(f"PyPI version {version!r}: arbitrary equality (===) is not accepted")
    try:
        specifiers = SpecifierSet(spec)
    except InvalidSpecifier:
        raise ValueError(
            f"PyPI version {version!r} is neither a version (1.2.3) nor a range (>=1,<2)"
        ) from None
    if len(specifiers) == 0:
        raise ValueError(f"PyPI version {version!r} is empty")
    try:
        requirement = Requirement(f"{name}{specifiers}")
    except InvalidRequirement:
        raise ValueError(f"PyPI requirement {name!r} {version!r} is invalid") from None
    if requirement.url or requirement.marker or requirement.extras:
        raise ValueError(f"PyPI requirement {name!r} {version!r} must be a name and a range")
    return str(requirement)


def npm_spec(name: str, version: str) -> str:
    """The `name@range` argument for `npm install`.

    Raises:
        ValueError: the name breaks npm's naming rules, or the version is not a semver
            version or range (dist-tags, `file:`, `git+`, URLs, aliases and paths included).
    """
    if (
        len(name) > 214
        or _NPM_NAME.fullmatch(name) is None
        or name in _NPM_RESERVED
        or name.split("/")[-1] in _NPM_RESERVED
    ):
        raise ValueError(
            f"npm package name {name!r} breaks npm's naming rules (lowercase, URL-safe,"
            " optionally @scope/name)"
        )
    if _NPM_RANGE.fullmatch(version) is None:
        raise ValueError(
            f"npm version {version!r} is not a semver version or range"
            " (e.g. 1.2.3, ^1.2, >=1 <2); tags, URLs, paths and git specs are not accepted"
        )
    return f"{name}@{version.strip()}"


def executable_name(bin_name: str) -> str:
    """`bin_name` when it is a plain file name.

    Raises:
        ValueError: it is empty, a path, or starts with a dot or dash.
    """
    if _BIN.fullmatch(bin_name) is None:
        raise ValueError(f"executable {bin_name!r} must be a plain file name, not a path")
    return bin_name


def default_executable(source: str, name: str) -> str:
    """The executable a package is expected to install when the entry names none: the
    package's name (without its npm scope)."""
    return name.rsplit("/", 1)[-1] if source == "npm" else name


def install_folder_name(name: str, version: str) -> str:
    """A folder name unique to (name, version spec) that is safe on any file system."""
    safe = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip(".-")[:60] or "package"
    digest = hashlib.sha256(json.dumps([name, version]).encode()).hexdigest()[:16]
    return f"{safe}-{digest}"
