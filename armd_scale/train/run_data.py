"""The training run's view of its data: resolved shard sets, tokenizer identity and loaders.

The data arrives prepared: `DataSources` names shard sets that exist. Building a built-in corpus or
training its tokenizer on first use is the command layer's job (`armd_scale.commands.train.prepare_data`),
so nothing under `train/` imports the corpus builders (`armd_scale.data.prepare`).

Nothing here writes into the config: what the shards say (the tokenizer's vocabulary size, its
identity) is returned as facts, and the model is configured from config + facts (`model_config`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from ..config import Config, ConfigError
from ..data.errors import DataError
from ..data.loading.loader import ShardLoader
from ..data.loading.mixture import MixtureSource
from ..data.manifest import read_manifest
from ..data.tokenizers.ref import TokenizerMismatch, TokenizerRef
from .distributed import DistInfo
from .engine import BatchLayout


@dataclass
class TrainData:
    cfg: Config
    train_sources: list[MixtureSource]  # one shard set, or the sources of a mixture
    val_url: str | None
    tokenizer: TokenizerRef  # location None when the run names no tokenizer (shards built elsewhere)
    vocab_size: int  # the tokenizer's ids, from the shards' manifest
    eos_id: int | None = None  # the document separator, from the manifest; read only with data.document_mask

    def model_config(self) -> Config:
        """The config the model is built from: the run's config with the padded-vocabulary fact from
        the shards (`model.tokenizer_vocab_size`) filled in. A copy: the run's config stays what the
        user resolved (config.yaml), the fact is recorded in run_facts.json."""
        return with_tokenizer_vocab(self.cfg, self.vocab_size)

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
            expect_tokenizer_sha=self.tokenizer.checksum,
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
            expect_tokenizer_sha=self.tokenizer.checksum,
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


@dataclass(frozen=True)
class DataSources:
    """The shard sets a run reads, prepared: `train` (a URL, or `data.train`'s mixture entries), `val`
    and the tokenizer location (`data.tokenizer`, or the one built with a built-in corpus)."""

    train: Any
    val: str | None
    tokenizer: str | None

    @classmethod
    def of_config(cls, cfg: Config) -> DataSources:
        """The sources exactly as the config names them: for shard sets that already exist. A built-in
        or synthetic corpus must be prepared first (its shards are built on first use)."""
        d = cfg.data
        if isinstance(d.train, str) and d.train.startswith(("builtin:", "synthetic:")):
            raise ConfigError(
                f"data.train={d.train!r} is a built-in corpus: prepare it first (`armd train` does, through "
                "armd_scale.commands.train.prepare_data) and pass the prepared DataSources"
            )
        return cls(d.train, d.val, d.tokenizer)


def open_train_data(cfg: Config, dist_info: DistInfo, sources: DataSources | None = None) -> TrainData:
    """Open the prepared shard sets (`sources`, default: as the config names them) and check them
    against each other, the config and the tokenizer. Reads; never changes `cfg`."""
    del dist_info  # every rank reads the manifests itself; kept for the call sites' symmetry
    sources = sources or DataSources.of_config(cfg)
    train = sources.train
    if isinstance(train, str):
        mixture = [MixtureSource(train)]
    else:
        mixture = [MixtureSource(s.path.rstrip("/"), s.weight, s.epochs) for s in train]
    train_url = mixture[0].url
    manifest = read_manifest(train_url)
    for i, source in enumerate(mixture[1:], start=1):
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
    with_tokenizer_vocab(cfg, manifest.vocab_size, train_url)  # refuses a model smaller than its tokenizer
    if sources.tokenizer is not None:  # the kind is what opening it finds
        tokenizer = check_tokenizer(TokenizerRef(sources.tokenizer, "", manifest.tokenizer_sha256), train_url)
    else:
        kind = manifest.tokenizer.get("kind", "") if isinstance(manifest.tokenizer, dict) else ""
        tokenizer = TokenizerRef(None, str(kind), manifest.tokenizer_sha256)
    if sources.val is not None:
        val = read_manifest(sources.val)
        if val.tokenizer_sha256 != manifest.tokenizer_sha256:
            raise ConfigError(
                f"validation shards {sources.val} were built with tokenizer {val.tokenizer_sha256[:12]} but the "
                f"training shards with {manifest.tokenizer_sha256[:12]}"
            )
    eos_id = document_separator(manifest.build, train_url) if cfg.data.document_mask else None
    return TrainData(cfg, mixture, sources.val, tokenizer, manifest.vocab_size, eos_id)


def document_separator(build: dict[str, Any], where: str) -> int:
    """The EOS id packed after every document of a shard set (its manifest's build.eos_id), which
    data.document_mask finds documents by. Shard sets have always recorded it, so old ones need nothing
    new; a tokenizer without an EOS id (id-only corpora) packs no separator and is refused."""
    eos_id = build.get("eos_id")
    if not isinstance(eos_id, int) or isinstance(eos_id, bool):
        raise ConfigError(
            f"data.document_mask=true finds documents by the EOS id packed after each one, but the shard set at "
            f"{where} records eos_id={eos_id!r} (its tokenizer has no EOS id, so its windows have no boundaries); "
            "set data.document_mask=false or rebuild the shards with a tokenizer that has one"
        )
    return eos_id


def with_tokenizer_vocab(cfg: Config, tokenizer_vocab: int, where: str = "the shards") -> Config:
    """A copy of `cfg` whose `model.tokenizer_vocab_size` records vocabulary padding (model.vocab_size
    above the tokenizer's size), so padded ids get no probability. Refuses a model smaller than its
    tokenizer, and a `model.tokenizer_vocab_size` set to another size (a run.dir/config.yaml written
    before run_facts.json existed carries the setting: the same size is accepted)."""
    model = cfg.model
    if tokenizer_vocab > model.vocab_size:
        padded = -(-tokenizer_vocab // 64) * 64
        raise ConfigError(
            f"the tokenizer of {where} has {tokenizer_vocab} ids but model.vocab_size={model.vocab_size}: a model "
            f"cannot be smaller than its tokenizer; set model.vocab_size >= {tokenizer_vocab} (e.g. {padded}, "
            "a multiple of 64)"
        )
    if model.tokenizer_vocab_size is not None and model.tokenizer_vocab_size != tokenizer_vocab:
        raise ConfigError(
            f"model.tokenizer_vocab_size={model.tokenizer_vocab_size} but the tokenizer of {where} has "
            f"{tokenizer_vocab} ids; drop the setting (the trainer takes it from the shards)"
        )
    out = copy.deepcopy(cfg)
    if out.model.tokenizer_vocab_size is None and tokenizer_vocab < model.vocab_size:
        out.model.tokenizer_vocab_size = tokenizer_vocab
    return out


def check_tokenizer(ref: TokenizerRef, where: str) -> TokenizerRef:
    """data.tokenizer must be the tokenizer the shards were built with: the run records it for
    evaluation and generation, which would otherwise decode ids with the wrong vocabulary. Opens it
    through the reference (the one verification), and returns the reference with the kind found."""
    try:
        tokenizer = ref.open()
    except TokenizerMismatch as e:
        raise ConfigError(
            f"data.tokenizer={ref.location!r} has sha256 {e.actual} ({e.file}) but the shards at {where} were built "
            f"with tokenizer {e.expected}: point data.tokenizer at the tokenizer the shards were built with"
        ) from None
    except DataError as e:
        raise ConfigError(f"data.tokenizer={ref.location!r}: {e}") from None
    return TokenizerRef(ref.location, tokenizer.kind, ref.checksum)
