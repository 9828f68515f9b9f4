"""Built-in corpora: pydoc topics, and a Markov source that knows its own entropy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from armd_scale.data.errors import DataError
from armd_scale.data.manifest import read_manifest
from armd_scale.data.prepare.corpora import MarkovSource, parse_synthetic, pydoc_documents
from armd_scale.data.prepare.synthetic import build_synthetic_shards
from armd_scale.data.tokenizers.load import tokenizer_info
from tests.data.conftest import shard_stream


def h(*p: float) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def empirical_conditional_entropy(seqs: np.ndarray, vocab: int, order: int) -> float:
    """Plug-in estimate of H(X_t | previous `order` symbols) from positions t >= order."""
    ctx = np.zeros(seqs[:, order:].shape, dtype=np.int64)
    for j in range(order):
        ctx = ctx * vocab + seqs[:, j : seqs.shape[1] - order + j]
    counts = np.zeros((vocab**order, vocab))
    np.add.at(counts, (ctx.ravel(), seqs[:, order:].ravel()), 1)
    joint = counts / counts.sum()
    cond = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return float(-(joint[joint > 0] * np.log(cond[joint > 0])).sum())


def test_pydoc_corpus_is_present_and_stable() -> None:
    docs = pydoc_documents()
    assert len(docs) > 50 and sum(map(len, docs)) > 100_000
    assert docs == pydoc_documents() and all(d.strip() for d in docs)


def test_entropy_rate_of_a_hand_computable_chain() -> None:
    # P(next | 0) = (0.9, 0.1), P(next | 1) = (0.5, 0.5): stationary (5/6, 1/6)
    chain = MarkovSource.from_transitions(np.array([[0.9, 0.1], [0.5, 0.5]]))
    assert np.allclose(chain.stationary(), [5 / 6, 1 / 6])
    assert chain.entropy_rate() == pytest.approx(5 / 6 * h(0.9, 0.1) + 1 / 6 * math.log(2), abs=1e-12)
    # a first token from the stationary law, then the rate per token
    assert chain.sequence_entropy(10) == pytest.approx(h(5 / 6, 1 / 6) + 9 * chain.entropy_rate(), abs=1e-12)
    # order 2 whose rows ignore the context is i.i.d.: rate = entropy of one row
    iid = MarkovSource.from_transitions(np.tile([0.7, 0.2, 0.1], (9, 1)), order=2)
    assert iid.entropy_rate() == pytest.approx(h(0.7, 0.2, 0.1), abs=1e-12)
    assert iid.sequence_entropy(5) == pytest.approx(5 * h(0.7, 0.2, 0.1), abs=1e-12)


@pytest.mark.parametrize("vocab,order,concentration", [(6, 1, 0.3), (5, 2, 1.0)])
def test_samples_have_the_reported_entropy(vocab: int, order: int, concentration: float) -> None:
    chain = MarkovSource(vocab, order, seed=11, concentration=concentration)
    seqs = chain.sample(4000, 64, seed=0)
    assert seqs.min() >= 0 and seqs.max() < vocab
    estimate = empirical_conditional_entropy(seqs, vocab, order)
    assert estimate == pytest.approx(chain.entropy_rate(), abs=0.01)
    # sequences start in the stationary law: first-token frequencies match its marginal
    first = chain.stationary().reshape(vocab, -1).sum(1)
    assert np.allclose(np.bincount(seqs[:, 0], minlength=vocab) / len(seqs), first, atol=0.025)


def test_source_is_seeded() -> None:
    a, b, c = MarkovSource(8, 2, seed=1), MarkovSource(8, 2, seed=1), MarkovSource(8, 2, seed=2)
    assert a.identity() == b.identity() != c.identity()
    assert (a.sample(3, 20, seed=4) == b.sample(3, 20, seed=4)).all()
    assert a.entropy_rate() != c.entropy_rate()


def test_synthetic_url_parsing() -> None:
    src, sizes = parse_synthetic("synthetic:markov?vocab=7&order=3&seed=2&samples=100&val_samples=0")
    assert (src.vocab_size, src.order, src.params["seed"]) == (7, 3, 2) and sizes == {"samples": 100, "val_samples": 0}
    with pytest.raises(DataError, match="unknown key 'vocabulary'"):
        parse_synthetic("synthetic:markov?vocabulary=7")
    with pytest.raises(DataError, match="unknown synthetic source"):
        parse_synthetic("synthetic:hmm")


def test_synthetic_shards_report_their_entropy(tmp_path: Path) -> None:
    spec = "synthetic:markov?vocab=6&order=2&seed=3&samples=300&val_samples=20"
    build_synthetic_shards(spec, str(tmp_path), seq_len=32, samples_per_shard=64)
    info = tokenizer_info(str(tmp_path / "tokenizer"))
    source, _ = parse_synthetic(spec)
    assert info["kind"] == "synthetic" and info["vocab_size"] == 10 and info["sha256"] == source.identity()
    assert info["entropy_rate_nats"] == pytest.approx(source.entropy_rate(), abs=1e-12)
    train = shard_stream(str(tmp_path / "train")).reshape(-1, 32)
    assert train.shape == (300, 32) and train.min() >= 4 and train.max() < 10  # ids 0..3 stay special
    assert (train - 4 == source.sample(300, 32, seed=0)).all()
    assert read_manifest(str(tmp_path / "val")).num_samples == 20
