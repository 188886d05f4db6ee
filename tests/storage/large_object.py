"""Large objects for transfer tests and benchmarks, never held in memory: deterministic
pseudo-random bytes generated chunk by chunk from a seed (the same seed gives the same bytes,
so their SHA-256 is known before they are stored), written into a local backend's root with
the local backend's own code, and files hashed while read."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from storage_worker.backends.local import LocalStore
from storage_worker.backends.port import StoredObject

CHUNK = 1024 * 1024
MIB = 1024 * 1024


def pseudo_random_chunks(size: int, seed: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """`size` bytes from `seed`, as chunks of `chunk` bytes (the last one shorter)."""
    generator = random.Random(seed)
    left = size
    while left > 0:
        step = min(chunk, left)
        yield generator.randbytes(step)
        left -= step


def sha256_of(size: int, seed: int) -> str:
    """The SHA-256 (hex) of `pseudo_random_chunks(size, seed)`, computed chunk by chunk."""
    digest = hashlib.sha256()
    for chunk in pseudo_random_chunks(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    """The SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


async def _body(size: int, seed: int) -> AsyncIterator[bytes]:
    for chunk in pseudo_random_chunks(size, seed):
        yield chunk


async def write_local_object(root: Path, key: str, size: int, seed: int) -> StoredObject:
    """Store `size` pseudo-random bytes from `seed` under the full `key` of the local backend
    rooted at `root`, with their SHA-256 (as a put through the worker would store them).

    Raises:
        FerrymanError: the local backend refused the key or the write.
    """
    store = LocalStore("local", root)
    try:
        return await store.put(
            key,
            _body(size, seed),
            content_type="application/octet-stream",
            metadata={},
            tags={},
            sha256=sha256_of(size, seed),
        )
    finally:
        await store.close()
