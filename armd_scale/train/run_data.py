"""The training run's view of its data: resolved shard sets, tokenizer identity and loaders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from ..config import Config, ConfigError
from ..data.loading.loader import ShardLoader
from ..data.loading.mixture import MixtureSource
from ..data.manifest import read_manifest
from ..data.prepare.builtin import ensure_builtin_dataset
from .distributed import DistInfo, barrier
from .engine import BatchLayout


@dataclass
class TrainData:
    cfg: Config
    train_sources: list[MixtureSource]  # one shard set, or the sources of a mixture
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
            self.train_sources,
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
            **self._chunk_options(),
        )

    def _chunk_options(self) -> dict[str, Any]:
        d = self.cfg.data
        return dict(
            shuffle_chunks=d.shuffle_chunks, cache_dir=d.chunk_cache_dir, cache_bytes=int(d.chunk_cache_gb * 2**30)
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
            **self._chunk_options(),
        )


def loader_state_of_all_ranks(loader: ShardLoader) -> dict[str, Any]:
    """The loader state to checkpoint. Collective: every rank calls it. Each rank reads only its
    own chunks, so with on_bad_shard=skip each knows only the bad chunks it met; the saved state
    lists those of all ranks, so a resumed run (on any world size) skips every one of them."""
    if loader.on_bad_shard == "skip" and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, loader.state_dict())
        for state in states:
            loader.add_bad_chunks(state)
    return loader.state_dict()


def open_train_data(cfg: Config, dist_info: DistInfo) -> TrainData:
    """Resolve `data.train`/`data.val` (building built-in corpora once) and check them against the model."""
    # The first use builds the built-in corpus: local rank 0 of each node builds (the other ranks
    # wait for it), and its bars follow log.progress_bar like the trainer's.
    build_bars = dist_info.is_main and cfg.log.progress_bar
    train, val_url, tokenizer_dir = ensure_builtin_dataset(
        cfg.data, build=dist_info.local_rank == 0, progress=build_bars
    )
    barrier()
    if isinstance(train, str):
        sources = [MixtureSource(train)]
    else:
        sources = [MixtureSource(s.path.rstrip("/"), s.weight, s.epochs) for s in train]
    train_url = sources[0].url
    manifest = read_manifest(train_url)
    for i, source in enumerate(sources[1:], start=1):
        other = read_manifest(source.url)
        if (other.tokenizer_sha256, other.seq_len) != (manifest.tokenizer_sha256, manifest.seq_len):
            raise ConfigError(
                f"data.train[{i}] ({source.url}) holds seq_len {other.seq_len} from tokenizer "
                f"{other.tokenizer_sha256[:12]}, but data.train[0] ({train_url}) seq_len {manifest.seq_len} from "
                f"tokenizer {manifest.tokenizer_sha256[:12]}: a mixture needs one tokenizer and one seq_len"
            )
    if manifest.seq_len != cfg.data.seq_len:
        raise ConfigError(
            f"shards at {train_url} hold sequences of {manifest.seq_len} tokens but data.seq_len={cfg.data.seq_len}"
        )
    fit_model_vocab(cfg, manifest.vocab_size, train_url)
    if tokenizer_dir is not None:
        check_tokenizer(tokenizer_dir, manifest.tokenizer_sha256, train_url)
    if val_url is not None:
        val = read_manifest(val_url)
        if val.tokenizer_sha256 != manifest.tokenizer_sha256:
            raise ConfigError(
                f"validation shards {val_url} were built with tokenizer {val.tokenizer_sha256[:12]} but the "
                f"training shards with {manifest.tokenizer_sha256[:12]}"
            )
    return TrainData(cfg, sources, val_url, tokenizer_dir, manifest.tokenizer_sha256, manifest.vocab_size)


def fit_model_vocab(cfg: Config, tokenizer_vocab: int, where: str) -> None:
    """Refuse a model smaller than its tokenizer; record vocabulary padding (model.vocab_size above
    the tokenizer's size) in `model.tokenizer_vocab_size`, so padded ids get no probability."""
    model = cfg.model
    if tokenizer_vocab > model.vocab_size:
        padded = -(-tokenizer_vocab // 64) * 64
        raise ConfigError(
            f"the tokenizer of {where} has {tokenizer_vocab} ids but model.vocab_size={model.vocab_size}: a model "
            f"cannot be smaller than its tokenizer; set model.vocab_size >= {tokenizer_vocab} (e.g. {padded}, "
            "a multiple of 64)"
        )
    if model.tokenizer_vocab_size is None:
        if tokenizer_vocab < model.vocab_size:
            model.tokenizer_vocab_size = tokenizer_vocab
    elif model.tokenizer_vocab_size != tokenizer_vocab:
        raise ConfigError(
            f"model.tokenizer_vocab_size={model.tokenizer_vocab_size} but the tokenizer of {where} has "
            f"{tokenizer_vocab} ids; drop the setting (the trainer takes it from the shards)"
        )


def check_tokenizer(spec: str, expected_sha256: str, where: str) -> None:
    """data.tokenizer must be the tokenizer the shards were built with: the run records it for
    evaluation and generation, which would otherwise decode ids with the wrong vocabulary."""
    from ..data.errors import DataError
    from ..data.tokenizers.load import IdsOnlyTokenizer, load_tokenizer

    sha: str | None
    try:
        sha = load_tokenizer(spec).sha256
    except IdsOnlyTokenizer as e:
        sha = e.info.get("sha256")
    except DataError as e:
        raise ConfigError(f"data.tokenizer={spec!r}: {e}") from None
    if sha != expected_sha256:
        raise ConfigError(
            f"data.tokenizer={spec!r} has sha256 {sha} but the shards at {where} were built with tokenizer "
            f"{expected_sha256}: point data.tokenizer at the tokenizer the shards were built with"
        )
