"""Listings of the local backend: a walk of the root's folders in key order (UTF-8 byte
order, a folder sorting as `name/`), resumed after the last key of the previous page.

Each folder on the way is read whole and sorted: fine for the embedded default, not for
millions of objects in one folder.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
from collections.abc import Generator

from storage_worker.backends.local_fs import DIR_FLAGS, RootFs, describe
from storage_worker.backends.local_rules import RESERVED, encode_token, valid_segment
from storage_worker.backends.port import Listing, StoredObject


def list_page(
    fs: RootFs, prefix: str, delimiter: str | None, limit: int, after: str | None
) -> Listing:
    """One page of the objects (and, with a delimiter, folders) under `prefix`."""
    folder, _, name_prefix = prefix.rpartition("/")
    segments = folder.split("/") if folder else []
    if segments and segments[0] in RESERVED:
        return Listing(objects=[])
    try:
        fd = fs.open_dir(segments, create=False)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return Listing(objects=[])
        raise
    walk = _walk(fs, fd, f"{folder}/" if folder else "", name_prefix, delimiter, after)
    with contextlib.closing(walk):
        items = list(itertools.islice(walk, limit + 1))
    page = items[:limit]
    last = page[-1] if page else None
    return Listing(
        objects=[item for item in page if isinstance(item, StoredObject)],
        prefixes=[item for item in page if isinstance(item, str)],
        next_token=None
        if len(items) <= limit or last is None
        else encode_token(last if isinstance(last, str) else last.key),
    )


def _walk(
    fs: RootFs, fd: int, base: str, name_prefix: str, delimiter: str | None, after: str | None
) -> Generator[StoredObject | str, None, None]:
    """Objects and folders below `fd` in key order, after `after` (owns `fd`)."""
    try:
        for name, st in _entries(fd, at_root=base == "", name_prefix=name_prefix):
            is_dir = stat.S_ISDIR(st.st_mode)
            path = f"{base}{name}/" if is_dir else f"{base}{name}"
            if after is not None and path <= after and not (is_dir and after.startswith(path)):
                continue  # this key, or the whole folder, came on an earlier page
            if not is_dir:
                yield describe(path, st, fs.read_sidecar(path, st))
                continue
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed since it was listed
            if delimiter is None:
                yield from _walk(fs, child, path, "", None, after)
                continue
            with contextlib.closing(_walk(fs, child, path, "", None, None)) as inside:
                holds_object = next(inside, None) is not None
            if holds_object and (after is None or path > after):
                yield path
    finally:
        os.close(fd)


def _entries(fd: int, *, at_root: bool, name_prefix: str) -> list[tuple[str, os.stat_result]]:
    """Regular files and real folders in `fd`, in key order (a folder sorts as `name/`)."""
    found: list[tuple[str, os.stat_result]] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            name = entry.name
            if (at_root and name in RESERVED) or not name.startswith(name_prefix):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) and valid_segment(name):
                found.append((name, st))
    found.sort(key=lambda item: item[0] + "/" if stat.S_ISDIR(item[1].st_mode) else item[0])
    return found
