"""fsspec helpers: every data path is a URL (`/dir`, `file://`, `memory://`, `s3://`...).

Kept in one place so that atomic writes (temp name, then rename) and URL joining behave the same for
shards, manifests and tokenizers on every filesystem.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

StorageOptions = dict[str, Any] | None


def url_to_fs(url: str, storage_options: StorageOptions = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem of `url` and the path inside it. Local paths are made absolute."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def protocol_of(url: str) -> str:
    """`s3`, `memory`, `file`... (`file` for plain paths)."""
    fs, _ = url_to_fs(url)
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def join_url(base: str, *names: str) -> str:
    """`base/name/...` without doubling slashes; keeps the protocol of `base`."""
    out = base.rstrip("/")
    for name in names:
        out = f"{out}/{name.strip('/')}"
    return out


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    fs, path = url_to_fs(url, storage_options)
    return fs.cat_file(path)


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    return fs.exists(path)


def write_atomic(url: str, data: bytes, storage_options: StorageOptions = None) -> None:
    """Write `data` under a temporary name beside `url`, then rename it into place.

    A reader therefore never sees a half-written file under the final name, even if the writer is
    killed; at worst a `.tmp-*` file is left behind. (On object stores the rename is a copy, but
    the final object still appears only once complete.)
    """
    fs, path = url_to_fs(url, storage_options)
    parent, _, name = path.rpartition("/")
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def remove(url: str, storage_options: StorageOptions = None) -> None:
    fs, path = url_to_fs(url, storage_options)
    if fs.exists(path):
        fs.rm(path)


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
