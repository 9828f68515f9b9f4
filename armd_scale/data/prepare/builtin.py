"""Zero-setup data: build the tokenizer and shards of a built-in corpus once, into a cache.

`data.train: builtin:pydoc` (or `synthetic:markov?...`) makes every run on a fresh machine work
without a download or a manual build step. The cache entry is keyed by everything that changes its
content (corpus text, vocab size, seq_len, split, tool format), so different settings never share
an entry, and it is built in a temporary directory that is renamed into place: concurrent builders
(several nodes on a shared disk) cannot leave a half-built entry, and the loser of the rename
simply discards its copy. Processes with LOCAL_RANK != 0 wait for the entry instead of building.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import sentencepiece

from armd_scale.data.errors import DataError
from armd_scale.data.manifest import MANIFEST_FILE, MANIFEST_FORMAT
from armd_scale.data.prepare.corpora import builtin_fingerprint
from armd_scale.data.prepare.textio import BUILTIN_PREFIX, SYNTHETIC_PREFIX
from armd_scale.data.tokenizers.load import INFO_FILE, INFO_FORMAT

log = logging.getLogger(__name__)

BUILTIN_VAL_FRACTION = 0.05
BUILTIN_SAMPLES_PER_SHARD = 256
# The build seed picks the held-out documents; data.seed only orders samples and must not force
# a rebuild of the data set.
BUILD_SEED = 0


def is_builtin(url: str) -> bool:
    return url.startswith((BUILTIN_PREFIX, SYNTHETIC_PREFIX))


def _settings(data_cfg: Any) -> dict[str, Any]:
    spec = data_cfg.train
    base = {
        "spec": spec,
        "seq_len": data_cfg.seq_len,
        "formats": [MANIFEST_FORMAT, INFO_FORMAT],
        "samples_per_shard": BUILTIN_SAMPLES_PER_SHARD,
        "seed": BUILD_SEED,
    }
    if spec.startswith(SYNTHETIC_PREFIX):
        return base
    return {
        **base,
        "corpus_sha256": builtin_fingerprint(spec),
        "vocab_size": data_cfg.vocab_size,
        "val_fraction": BUILTIN_VAL_FRACTION,
        "sentencepiece": sentencepiece.__version__,
    }


def builtin_cache_dir(data_cfg: Any) -> Path:
    """Where the built data set for these settings lives (whether or not it is built yet)."""
    settings = _settings(data_cfg)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() else "-" for c in data_cfg.train.split("?")[0])
    return Path(data_cfg.cache_dir).expanduser() / f"{slug}-{key}"


def _complete(root: Path) -> bool:
    return (root / "train" / MANIFEST_FILE).is_file() and (root / "tokenizer" / INFO_FILE).is_file()


def _build(data_cfg: Any, root: Path, progress: bool) -> None:
    from armd_scale.data.prepare.shards import build_shards
    from armd_scale.data.prepare.synthetic import build_synthetic_shards
    from armd_scale.data.prepare.tokenizer_training import train_tokenizer

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".tmp-{root.name}-{uuid.uuid4().hex[:8]}"
    try:
        if data_cfg.train.startswith(SYNTHETIC_PREFIX):
            build_synthetic_shards(
                data_cfg.train,
                str(tmp),
                seq_len=data_cfg.seq_len,
                seed=BUILD_SEED,
                samples_per_shard=BUILTIN_SAMPLES_PER_SHARD,
            )
        else:
            tok = train_tokenizer(
                [data_cfg.train],
                str(tmp / "tokenizer"),
                vocab_size=data_cfg.vocab_size,
                seed=BUILD_SEED,
                progress=progress,
            )
            build_shards(
                [data_cfg.train],
                str(tmp),
                tok,
                seq_len=data_cfg.seq_len,
                val_fraction=BUILTIN_VAL_FRACTION,
                seed=BUILD_SEED,
                samples_per_shard=BUILTIN_SAMPLES_PER_SHARD,
                progress=progress,
            )
        (tmp / "settings.json").write_text(json.dumps(_settings(data_cfg), indent=2) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not _complete(root):
                raise
            log.info("another process built %s first; using its copy", root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_builtin_dataset(
    data_cfg: Any, *, build: bool | None = None, progress: bool = False, wait_timeout_s: float = 900.0
) -> tuple[Any, str | None, str | None]:
    """(train_url, val_url or None, tokenizer_dir) for `data_cfg` (a `DataConfig`).

    For `builtin:`/`synthetic:` specs the data set is built into `data.cache_dir` on first use
    (by this process if `build`, default: when LOCAL_RANK is 0 or unset; otherwise it waits up to
    `wait_timeout_s` for the builder). Real URLs, and mixtures (a list of sources), are returned
    unchanged with `data.tokenizer`. An explicit `data.val` always wins over the built validation split."""
    if not isinstance(data_cfg.train, str) or not is_builtin(data_cfg.train):
        return data_cfg.train, data_cfg.val, data_cfg.tokenizer
    root = builtin_cache_dir(data_cfg)
    if build is None:
        build = os.environ.get("LOCAL_RANK", "0") == "0"
    if not _complete(root):
        if build:
            log.info("building %s (seq_len=%d) into %s", data_cfg.train, data_cfg.seq_len, root)
            _build(data_cfg, root, progress)
        else:
            deadline = time.monotonic() + wait_timeout_s
            while not _complete(root):
                if time.monotonic() > deadline:
                    raise DataError(
                        f"waited {wait_timeout_s:.0f}s for {root} to be built by local rank 0; it never appeared"
                    )
                time.sleep(0.5)
    val = data_cfg.val
    if val is None and (root / "val" / MANIFEST_FILE).is_file():
        val = str(root / "val")
    return str(root / "train"), val, str(root / "tokenizer")
