"""Publishing a shard build whole: staged beside `--out`, then renamed into place under a short lock.

Why: two `armd shards` on one `--out` both exited 0 and left a mixture (the train manifest of one
build over shard files partly overwritten by the other, the val split of the other), and
`--overwrite` deleted the old manifests first, so a kill or a full disk midway left neither set.

Now, on a local file system:
- every output folder of the build (`OUT/train`, `OUT/val`, and `OUT/tokenizer` for a synthetic
  source) is refused when it exists, unless `overwrite`; checked before any work and again at publish;
- the build is written into a hidden staging folder beside OUT (`.OUT.shards-HOST-PID-RANDOM`, same
  file system), so nothing under OUT changes while it runs and a killed build leaves only its staging
  (removed by the next build on this host once its process is gone);
- publishing holds `.OUT.shards-lock` (created with O_EXCL; a lock of a dead process on this host is
  taken over) for the few renames it takes: the existing outputs are checked (a build that finished
  meanwhile makes this one fail, naming the folder), old ones moved aside (`--overwrite`), the new ones
  renamed in (tokenizer and val first, train, the folder a run needs, last), then the old ones deleted.
  Two builders therefore never mix: the loser fails with a clear message and the winner's set is whole,
  and an old set stays whole until the new one is complete.
Object stores (s3://, memory://) have no rename: see `in_place` and docs/DATA.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from armd_scale.atomic import fsync_dir
from armd_scale.data.errors import DataError
from armd_scale.data.urls import StorageOptions, exists, join_url, remove, url_to_fs
from armd_scale.processes import pid_alive

LOCK_WAIT_S = 60.0  # publishing takes milliseconds; a lock held longer belongs to a stuck process


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


@contextlib.contextmanager
def staged_out(
    out: str, outputs: Sequence[str], *, overwrite: bool, storage_options: StorageOptions = None
) -> Iterator[str]:
    """Yield the URL a build writes its `outputs` (subfolder names, in publishing order, the last
    being the one readers need) into; when the block ends without an error they replace OUT's.
    On an error nothing under OUT has changed and the staging folder is removed."""
    fs, path = url_to_fs(out, storage_options)
    if not isinstance(fs, LocalFileSystem):
        in_place(out, outputs, overwrite=overwrite, storage_options=storage_options)
        yield out
        return
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise DataError(f"--out {final} exists and is not a directory")
    _refuse_existing(final, outputs, overwrite)  # before the work: a refusal costs nothing
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(final)
    staging = final.parent / f".{final.name}.shards-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        try:
            yield str(staging)
        except DataError as e:  # name the folder the user gave, not the staging folder that is removed
            raise type(e)(str(e).replace(str(staging), str(final))) from None
        _publish(staging, final, outputs, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_existing(final: Path, outputs: Sequence[str], overwrite: bool, *, late: bool = False) -> list[str]:
    present = [name for name in outputs if (final / name).exists()]
    if present and not overwrite:
        where = final / present[0]
        if late:
            raise DataError(
                f"{where} appeared while this build ran: another `armd shards` on --out {final} finished first; "
                "this build published nothing (its staged files are removed) and the other build's set is whole"
            )
        raise DataError(f"a shard set already exists at {final} ({where}); pass --overwrite or choose another --out")
    return present


def _publish(staging: Path, final: Path, outputs: Sequence[str], overwrite: bool) -> None:
    with _lock(final):
        present = _refuse_existing(final, outputs, overwrite, late=True)
        final.mkdir(parents=True, exist_ok=True)
        aside = final.parent / f".{final.name}.shards-old-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        aside.mkdir()
        moved: list[str] = []
        placed: list[str] = []
        try:
            for name in present:
                os.rename(final / name, aside / name)
                moved.append(name)
            for name in outputs:
                if (staging / name).exists():
                    os.rename(staging / name, final / name)
                    placed.append(name)
        except OSError as e:
            for name in reversed(placed):  # put everything back as it was
                with contextlib.suppress(OSError):
                    os.rename(final / name, staging / name)
            for name in moved:
                with contextlib.suppress(OSError):
                    os.rename(aside / name, final / name)
            raise DataError(f"could not publish the shard set into {final}: {e}; {final} is as it was") from None
        fsync_dir(final)
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _lock(final: Path) -> Iterator[None]:
    lock = final.parent / f".{final.name}.shards-lock"
    me = json.dumps({"host": _host(), "pid": os.getpid()})
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and holder.get("host") == _host() and not pid_alive(int(holder.get("pid", 0))):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # left by a publisher killed on this host
                continue
            if time.monotonic() > deadline:
                raise DataError(
                    f"{lock} is held by {holder or 'an unknown process'} for more than {LOCK_WAIT_S:.0f} s; "
                    "if no `armd shards` is publishing to this --out, remove it"
                ) from None
            time.sleep(0.05)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _holder(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove_dead_staging(final: Path) -> None:
    """Staging folders of builds of this --out whose process on this host is gone (a kill)."""
    prefix = f".{final.name}.shards-"
    for entry in final.parent.glob(f"{prefix}*"):
        if entry.name.endswith("-lock") or not entry.is_dir():
            continue
        parts = entry.name[len(prefix) :].removeprefix("old-").rsplit("-", 2)
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue
        if not pid_alive(int(parts[1])):
            shutil.rmtree(entry, ignore_errors=True)


def in_place(out: str, outputs: Sequence[str], *, overwrite: bool, storage_options: StorageOptions = None) -> None:
    """Object stores: no rename, so no staging. Refuse existing outputs without `overwrite`; with it,
    remove their manifests first (readers then see an unfinished set, never an old manifest over new
    shards); the build writes in place, manifests last (docs/DATA.md says what this guarantees)."""
    from armd_scale.data.manifest import MANIFEST_FILE

    manifests = [join_url(out, name, MANIFEST_FILE) for name in outputs] + [join_url(out, MANIFEST_FILE)]
    found = [m for m in manifests if exists(m, storage_options)]
    if found and not overwrite:
        raise DataError(f"a shard set already exists at {out} ({found[0]}); pass --overwrite or choose another --out")
    for m in found:
        remove(m, storage_options)
    fs, path = url_to_fs(out, storage_options)
    fs.makedirs(path, exist_ok=True)
