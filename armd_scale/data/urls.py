"""fsspec helpers: every data path is a URL (`/dir`, `file://`, `memory://`, `s3://`...).

Kept in one place so that atomic writes (temp name, then rename), URL joining, ranged reads and the
retry policy for transient read errors behave the same for shards, manifests and tokenizers on
every filesystem.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from armd_scale.data.errors import DataError
from armd_scale.safe_paths import UnsafePathError, check_name, contained_path

StorageOptions = dict[str, Any] | None
T = TypeVar("T")
log = logging.getLogger(__name__)


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


def member_url(base: str, name: object, *, named_by: str, storage_options: StorageOptions = None) -> str:
    """`base/name` for a file name read from a file under `base` (untrusted input): the rule of
    `armd_scale/safe_paths.py`, a relative path without `..`, and on a local file system also inside
    `base` with symbolic links resolved and a regular file; a DataError naming `base`, `named_by` (the
    file and key that gave the name) and the name otherwise."""
    fs, path = url_to_fs(base, storage_options)
    try:
        if isinstance(fs, LocalFileSystem):
            return str(contained_path(path, name, named_by=named_by))
        return join_url(base, check_name(name, folder=base, named_by=named_by))
    except UnsafePathError as e:
        raise DataError(str(e)) from None


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    fs, path = url_to_fs(url, storage_options)
    return fs.cat_file(path)


def read_range(url: str, start: int, stop: int, storage_options: StorageOptions = None) -> bytes:
    """Bytes [start, stop) of `url`, and only those: one `pread` on a local file, one ranged request
    (an HTTP Range GET on object stores) elsewhere. Fewer bytes come back when the file is shorter.

    The one home of ranged reads, because each of fsspec's defaults over-reads: its buffered local
    file reads whole 4 KiB blocks (2.7x the bytes of a 1.5 KiB range), and a filesystem without its
    own `cat_file` reads a range through a read-ahead cache of several MB. Async filesystems (s3,
    gcs, http) and in-memory ones fetch exactly the range in their own `cat_file`; the others get a
    file opened with no cache, which fetches each read's range as asked."""
    fs, path = url_to_fs(url, storage_options)
    if type(fs) is LocalFileSystem:
        return _pread(path, start, stop)
    if isinstance(fs, AsyncFileSystem) or type(fs).cat_file is not AbstractFileSystem.cat_file:
        return fs.cat_file(path, start=start, end=stop)
    with fs.open(path, "rb", cache_type="none") as f:
        f.seek(start)
        return f.read(stop - start)


def _pread(path: str, start: int, stop: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        parts = []
        while start < stop:
            part = os.pread(f.fileno(), stop - start, start)
            if not part:  # end of file
                break
            parts.append(part)
            start += len(part)
        return b"".join(parts)


def is_local(url: str) -> bool:
    """True for plain paths and file:// URLs (and memory://): storage whose bytes cannot change in transit."""
    return protocol_of(url) in ("file", "local", "memory")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed remote read is tried again before the data is declared bad: `attempts`
    tries in all, waiting first_delay_s, 2x that, 4x ... (at most max_delay_s), each wait scaled by
    a random factor in [0.5, 1.5) so that hundreds of ranks hit by one outage do not retry in step."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def delay(self, retry: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2**retry) * (0.5 + random.random())


DEFAULT_RETRY = RetryPolicy()


def transient_errors() -> tuple[type[BaseException], ...]:
    """Exception types a retry can cure: OS and network errors, and the errors of the S3 client
    stack when it is loaded (botocore and aiohttp errors are not OSErrors). Looked up in
    sys.modules so that local-only runs never import them."""
    kinds: list[type[BaseException]] = [OSError, TimeoutError]
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        kinds += [botocore.BotoCoreError, botocore.ClientError]
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        kinds.append(aiohttp.ClientError)
    return tuple(kinds)


def retryable_read_error(e: BaseException) -> bool:
    """A read error worth retrying: transient (see transient_errors), and not a missing file."""
    return isinstance(e, transient_errors()) and not isinstance(e, FileNotFoundError)


def retry_call(fn: Callable[[], T], policy: RetryPolicy, *, retryable: Callable[[BaseException], bool], what: str) -> T:
    """fn(), tried up to policy.attempts times while it raises an error that `retryable` accepts;
    the last error is raised as is. Every retry is logged with its cause."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as e:
            if attempt == policy.attempts or not retryable(e):
                raise
            wait = policy.delay(attempt - 1)
            log.warning(
                "%s failed (%s: %s); try %d of %d in %.2fs",
                what,
                type(e).__name__,
                e,
                attempt + 1,
                policy.attempts,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


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
