"""Shard sets of a synthetic token source (`synthetic:markov?...`): independent stationary sequences
with a known entropy rate, so a model's loss can be compared with the best possible.

Beside the shards goes `tokenizer/tokenizer.json`, the record of the source: opened, it is an
`IdTokenizer` (ids without text), so the run's tokenizer reference works the same as for text.
"""

from __future__ import annotations

from typing import Any

from armd_scale import __version__
from armd_scale.data.manifest import Manifest, dtype_for_vocab
from armd_scale.data.prepare.corpora import SYNTHETIC_TOKEN_OFFSET, parse_synthetic
from armd_scale.data.prepare.shard_writer import ShardSetWriter, published, samples_for_size
from armd_scale.data.prepare.staging import staged_out
from armd_scale.data.shardio import DEFAULT_CHUNK_KB, chunk_samples_for
from armd_scale.data.tokenizers.base import INFO_FORMAT, write_tokenizer_info
from armd_scale.data.urls import StorageOptions, join_url


def build_synthetic_shards(
    spec: str,
    out: str,
    *,
    seq_len: int,
    seed: int = 0,
    samples_per_shard: int | None = None,
    shard_size_mb: float = 64.0,
    chunk_kb: float = DEFAULT_CHUNK_KB,
    overwrite: bool = False,
    storage_options: StorageOptions = None,
) -> dict[str, Manifest]:
    """Shards of independent stationary sequences from `synthetic:markov?...` (ids shifted past the
    special ids), plus `out/tokenizer/tokenizer.json` describing the source and its entropy rate."""
    source, sizes = parse_synthetic(spec)
    vocab = source.vocab_size + SYNTHETIC_TOKEN_OFFSET
    info = {
        "format": INFO_FORMAT,
        "kind": "synthetic",
        "source": spec,
        "sha256": source.identity(),
        "vocab_size": vocab,
        "token_offset": SYNTHETIC_TOKEN_OFFSET,
        "params": source.params,
        "entropy_rate_nats": source.entropy_rate(),
        "sequence_entropy_nats": source.sequence_entropy(seq_len),
    }
    dtype = dtype_for_vocab(vocab)
    per_shard = samples_per_shard or samples_for_size(seq_len, dtype, shard_size_mb)
    build = {"inputs": [spec], "seed": seed, "samples_per_shard": per_shard, "tool": f"armd_scale {__version__}"}
    outputs = ("tokenizer", "val", "train")
    with staged_out(out, outputs, overwrite=overwrite, storage_options=storage_options) as target:
        manifests = _sample_into(
            target, source, sizes, info, build, seq_len, vocab, per_shard, chunk_kb, seed, spec, storage_options
        )
    return {s: published(m, out, s) for s, m in manifests.items()}


def _sample_into(
    out: str,
    source: Any,
    sizes: dict[str, int],
    info: dict[str, Any],
    build: dict[str, Any],
    seq_len: int,
    vocab: int,
    per_shard: int,
    chunk_kb: float,
    seed: int,
    spec: str,
    storage_options: StorageOptions,
) -> dict[str, Manifest]:
    dtype = dtype_for_vocab(vocab)
    write_tokenizer_info(join_url(out, "tokenizer"), info, storage_options)
    manifests = {}
    for split, count, stream in (("val", sizes["val_samples"], 2 * seed + 1), ("train", sizes["samples"], 2 * seed)):
        if count <= 0:
            continue
        writer = ShardSetWriter(
            join_url(out, split),
            split,
            seq_len,
            vocab,
            source.identity(),
            per_shard,
            None,
            build=build,
            tokenizer_meta={"kind": "synthetic", "source": spec},
            storage_options=storage_options,
            chunk_samples=chunk_samples_for(seq_len, dtype, chunk_kb),
        )
        writer.add_samples(source.sample(count, seq_len, seed=stream) + SYNTHETIC_TOKEN_OFFSET)
        manifests[split] = writer.finish()
    return manifests
