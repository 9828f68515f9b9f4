"""The training run's view of its data: resolved shard sets, tokenizer identity and loaders."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, ConfigError
from ..data.builtin import ensure_builtin_dataset
from ..data.loader import ShardLoader
from ..data.manifest import read_manifest
from .distributed import DistInfo, barrier
from .engine import BatchLayout


@dataclass
class TrainData:
    cfg: Config
    train_url: str
    val_url: str | None
    tokenizer_dir: str | None
    tokenizer_sha256: str
    vocab_size: int

    def train_loader(
        self, layout: BatchLayout, dp_rank: int, dp_world: int, *, pin_memory: bool = False
    ) -> ShardLoader:
        """pin_memory: batches in page-locked memory, so the copy to a GPU is asynchronous (CUDA only)."""
        d = self.cfg.data
        return ShardLoader(
            self.train_url,
            global_batch_size=layout.global_batch,
            micro_batch_size=layout.micro_batch,
            rank=dp_rank,
            world_size=dp_world,
            seed=d.seed,
            num_workers=d.num_workers,
            prefetch=d.prefetch,
            on_bad_shard=d.on_bad_shard,
            expect_tokenizer_sha=self.tokenizer_sha256,
            expect_seq_len=d.seq_len,
            pin_memory=pin_memory,
        )

    def val_loader(self, micro_batch: int, dp_rank: int, dp_world: int) -> ShardLoader | None:
        """A fresh, non-looping loader: every evaluation sees the same first batches."""
        if self.val_url is None:
            return None
        return ShardLoader(
            self.val_url,
            global_batch_size=micro_batch * dp_world,
            micro_batch_size=micro_batch,
            rank=dp_rank,
            world_size=dp_world,
            seed=self.cfg.data.seed,
            prefetch=0,
            expect_tokenizer_sha=self.tokenizer_sha256,
            expect_seq_len=self.cfg.data.seq_len,
            loop=False,
        )


def open_train_data(cfg: Config, dist_info: DistInfo) -> TrainData:
    """Resolve `data.train`/`data.val` (building built-in corpora once) and check them against the model."""
    train_url, val_url, tokenizer_dir = ensure_builtin_dataset(cfg.data, progress=dist_info.is_main)
    barrier()
    manifest = read_manifest(train_url)
    if manifest.seq_len != cfg.data.seq_len:
        raise ConfigError(
            f"shards at {train_url} hold sequences of {manifest.seq_len} tokens but data.seq_len={cfg.data.seq_len}"
        )
    if manifest.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer of {train_url} has {manifest.vocab_size} tokens but model.vocab_size="
            f"{cfg.model.vocab_size}; set model.vocab_size >= {manifest.vocab_size}"
        )
    if val_url is not None:
        val = read_manifest(val_url)
        if val.tokenizer_sha256 != manifest.tokenizer_sha256:
            raise ConfigError(
                f"validation shards {val_url} were built with tokenizer {val.tokenizer_sha256[:12]} but the "
                f"training shards with {manifest.tokenizer_sha256[:12]}"
            )
    return TrainData(cfg, train_url, val_url, tokenizer_dir, manifest.tokenizer_sha256, manifest.vocab_size)
