"""Shared fixtures for the data-pipeline tests: a tiny mixed-format corpus, a small tokenizer and
shard sets whose samples carry their own index, so tests can check coverage by content."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from armd_scale.data.manifest import Manifest, read_manifest
from armd_scale.data.prepare.shard_writer import ShardSetWriter
from armd_scale.data.prepare.tokenizer_training import train_tokenizer
from armd_scale.data.shardio import load_shard
from armd_scale.data.tokenizers.base import Tokenizer
from armd_scale.data.tokenizers.load import load_tokenizer

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"

DOCS_TXT = [
    "The quick brown fox jumps over the lazy dog.\n    Indented line with  two spaces.",
    "Second paragraph of the first file.\nIt has two lines.",
]
DOCS_JSONL = ["first json document", "second json document\nwith a newline", "third one: x = 1 + 2"]
DOC_GZ = "A gzipped document about shards and loaders."


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.txt (two paragraphs), b.jsonl (three records, field 'body'), c.txt.gz, and files that a
    folder input must ignore (README, notes.md)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text("\n\n".join(DOCS_TXT) + "\n")
    (root / "b.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(DOCS_JSONL)))
    with gzip.open(root / "c.txt.gz", "wt") as f:
        f.write(DOC_GZ + "\n")
    (root / "README").write_text("not corpus text\n")
    (root / "notes.md").write_text("not corpus text either\n")
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256-piece BPE tokenizer trained on the pydoc topics (covers ASCII prose and code)."""
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["builtin:pydoc"], str(out), vocab_size=256, character_coverage=1.0)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style byte-level BPE tokenizer.json of 400 ids trained on the pydoc topics."""
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(["builtin:pydoc"], str(out), vocab_size=400, kind="byte-bpe")
    return out


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT-style (lower-casing) WordPiece tokenizer.json of 400 ids trained on the pydoc topics."""
    out = tmp_path_factory.mktemp("wordpiece")
    train_tokenizer(["builtin:pydoc"], str(out), vocab_size=400, kind="wordpiece")
    return out


def write_indexed_set(
    url: str,
    num_samples: int,
    *,
    seq_len: int = 4,
    samples_per_shard: int = 64,
    vocab_size: int = 5000,
    tokenizer_sha: str = "t" * 64,
    chunk_samples: int = 8,
    first_id: int = 0,
) -> Manifest:
    """A shard set whose sample i is [first_id + i, ...] (seq_len times): content says which sample it is."""
    assert first_id + num_samples < vocab_size
    writer = ShardSetWriter(
        url, "train", seq_len, vocab_size, tokenizer_sha, samples_per_shard, None, chunk_samples=chunk_samples
    )
    ids = np.repeat(np.arange(first_id, first_id + num_samples, dtype=np.int64), seq_len).reshape(num_samples, seq_len)
    writer.add_samples(ids)
    return writer.finish()


@pytest.fixture()
def indexed_set(tmp_path: Path) -> str:
    """1000 samples in 16 shards (the last one smaller: 15 x 64 + 40), chunks of 8 samples."""
    url = str(tmp_path / "indexed")
    write_indexed_set(url, 1000)
    return url


def sample_ids(batch) -> list[int]:
    """Sample indices of a batch of an indexed set (rows must be constant)."""
    rows = batch.numpy()
    assert (rows == rows[:, :1]).all(), "a row mixes samples"
    return rows[:, 0].tolist()


def shard_stream(url: str) -> np.ndarray:
    """All tokens of a split, reading its shards in manifest order."""
    m = read_manifest(url)
    rows = [load_shard(m.shard_url(i), e, seq_len=m.seq_len, dtype=m.dtype) for i, e in enumerate(m.shards)]
    return np.concatenate(rows).reshape(-1).astype(np.int64)
