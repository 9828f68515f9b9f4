"""Corpora that need no download.

- `builtin:pydoc`: the help topics shipped with every CPython in `pydoc_data.topics` (~0.5 MB of
  English prose and Python code), one document per topic. Enough for the zero-setup demo.
- `synthetic:markov?...`: a seeded random order-k Markov chain over a small vocabulary whose entropy
  rate is known exactly, so a test can check that a model's loss reaches the true entropy rather
  than merely goes down.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from armd_scale.data.errors import DataError

BUILTIN_CORPORA = ("builtin:pydoc",)
SYNTHETIC_SOURCES = ("synthetic:markov",)
# Synthetic ids are shifted by this much so ids 0..3 keep their meaning (pad, unk, bos, eos).
SYNTHETIC_TOKEN_OFFSET = 4
# Dense linear solve for the stationary distribution up to this many contexts, power iteration above.
_DENSE_LIMIT = 2048


def pydoc_documents() -> list[str]:
    """The `pydoc_data.topics` texts in sorted topic order (the order is part of the corpus)."""
    from pydoc_data.topics import topics

    docs = [topics[name].replace("\r\n", "\n").strip("\n") for name in sorted(topics)]
    return [d for d in docs if d.strip()]


def builtin_documents(name: str) -> Iterator[str]:
    if name == "builtin:pydoc":
        yield from pydoc_documents()
        return
    raise DataError(f"unknown built-in corpus '{name}'; available: {', '.join(BUILTIN_CORPORA)}")


def builtin_fingerprint(name: str) -> str:
    """SHA-256 of a built-in corpus's text: pydoc topics differ between Python versions."""
    h = hashlib.sha256()
    for doc in builtin_documents(name):
        h.update(doc.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


class MarkovSource:
    """A stationary order-k Markov chain over symbols 0..vocab_size-1.

    Transition rows are drawn from a symmetric Dirichlet(concentration) with a seeded generator:
    small concentrations give peaked rows (low entropy), large ones near-uniform rows. Every row is
    strictly positive, so the chain over contexts is irreducible and aperiodic and has a unique
    stationary distribution; sequences start from it, so every position after the first `order`
    has conditional entropy exactly `entropy_rate()`.

    A context is the last `order` symbols read as a base-`vocab_size` number, oldest digit first.
    """

    def __init__(self, vocab_size: int = 16, order: int = 1, seed: int = 0, concentration: float = 0.5):
        if vocab_size < 2 or order < 1 or concentration <= 0:
            raise DataError(
                f"synthetic:markov needs vocab >= 2, order >= 1 and concentration > 0; got "
                f"vocab={vocab_size}, order={order}, concentration={concentration}"
            )
        if vocab_size**order > 1 << 22:
            raise DataError(f"synthetic:markov vocab**order = {vocab_size}**{order} contexts is too many")
        rng = np.random.default_rng([seed, 0])
        table = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size**order)
        self._init(table, order, dict(vocab=vocab_size, order=order, seed=seed, concentration=concentration))

    @classmethod
    def from_transitions(cls, transitions: np.ndarray, order: int = 1) -> MarkovSource:
        """A chain with a given table [vocab**order, vocab] of P(next | context); rows must sum to 1."""
        table = np.asarray(transitions, dtype=np.float64)
        vocab = table.shape[-1]
        if table.ndim != 2 or table.shape[0] != vocab**order:
            raise DataError(
                f"transition table shape {table.shape} != (vocab**order, vocab) = ({vocab**order}, {vocab})"
            )
        if (table < 0).any() or not np.allclose(table.sum(1), 1.0):
            raise DataError("transition table rows must be probabilities summing to 1")
        self = cls.__new__(cls)
        self._init(table, order, dict(vocab=vocab, order=order, table="explicit"))
        return self

    def _init(self, table: np.ndarray, order: int, params: dict) -> None:
        self.transitions = table
        self.vocab_size = table.shape[1]
        self.order = order
        self.num_contexts = table.shape[0]
        self.params = params
        self._cdf = np.cumsum(table, axis=1)
        # successor context of (context c, symbol x) = (c * V + x) mod V**k
        self._next = (
            np.arange(self.num_contexts)[:, None] * self.vocab_size + np.arange(self.vocab_size)
        ) % self.num_contexts
        self._stationary: np.ndarray | None = None

    def stationary(self) -> np.ndarray:
        """Stationary distribution over contexts (length vocab**order)."""
        if self._stationary is None:
            n = self.num_contexts
            flow = self.transitions.ravel()
            if n <= _DENSE_LIMIT:  # solve pi (T - I) = 0 with sum(pi) = 1 exactly
                t = np.zeros((n, n))
                np.add.at(t, (np.repeat(np.arange(n), self.vocab_size), self._next.ravel()), flow)
                a = t.T - np.eye(n)
                a[-1] = 1.0
                b = np.zeros(n)
                b[-1] = 1.0
                pi = np.linalg.solve(a, b)
            else:
                pi = np.full(n, 1.0 / n)
                for _ in range(100_000):
                    new = np.bincount(self._next.ravel(), weights=(pi[:, None] * self.transitions).ravel(), minlength=n)
                    done = np.abs(new - pi).sum() < 1e-14
                    pi = new
                    if done:
                        break
            pi = np.clip(pi, 0.0, None)
            self._stationary = pi / pi.sum()
        return self._stationary

    def entropy_rate(self) -> float:
        """Exact entropy rate in nats/token: sum_c pi(c) * H(P(. | c))."""
        p = self.transitions
        row_entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        return float(self.stationary() @ row_entropy)

    def sequence_entropy(self, length: int) -> float:
        """Exact entropy (nats) of a `length`-token sequence drawn by `sample`: the entropy of its
        first min(length, order) tokens under the stationary law plus entropy_rate per later token.
        Divide by `length` for the best achievable mean loss of a left-to-right model."""
        k = min(length, self.order)
        first = self.stationary().reshape(self.vocab_size**k, -1).sum(axis=1)
        h0 = float(-np.sum(first[first > 0] * np.log(first[first > 0])))
        return h0 + max(0, length - self.order) * self.entropy_rate()

    def sample(self, num_sequences: int, length: int, seed: int = 0) -> np.ndarray:
        """`num_sequences` independent stationary sequences of `length` symbols, int64 [n, length]."""
        rng = np.random.default_rng([seed, 1])
        ctx = rng.choice(self.num_contexts, size=num_sequences, p=self.stationary())
        out = np.empty((num_sequences, length), dtype=np.int64)
        digits = ctx.copy()
        for j in range(self.order - 1, -1, -1):  # the start context's symbols, oldest first
            if j < length:
                out[:, j] = digits % self.vocab_size
            digits //= self.vocab_size
        for t in range(self.order, length):
            u = rng.random(num_sequences)
            x = np.minimum((self._cdf[ctx] < u[:, None]).sum(axis=1), self.vocab_size - 1)
            out[:, t] = x
            ctx = self._next[ctx, x]
        return out

    def identity(self) -> str:
        """SHA-256 of the parameters and the transition table: the 'tokenizer' identity of its shards."""
        h = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.transitions, dtype="<f8").tobytes())
        return h.hexdigest()


# Keys a synthetic URL may set, with their defaults and types.
SYNTHETIC_DEFAULTS: dict[str, float | int] = dict(
    vocab=16, order=1, seed=0, concentration=0.5, samples=4096, val_samples=256
)


def parse_synthetic(url: str) -> tuple[MarkovSource, dict[str, int]]:
    """`synthetic:markov?vocab=16&order=2&seed=0&concentration=0.5&samples=4096&val_samples=256`
    -> the source and the split sizes (in sequences). Unknown keys are an error, not ignored."""
    parts = urlsplit(url)
    if f"{parts.scheme}:{parts.path}" not in SYNTHETIC_SOURCES:
        raise DataError(f"unknown synthetic source '{url}'; available: {', '.join(SYNTHETIC_SOURCES)}")
    values: dict[str, float | int] = dict(SYNTHETIC_DEFAULTS)
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key not in SYNTHETIC_DEFAULTS:
            raise DataError(f"'{url}': unknown key '{key}'; allowed: {', '.join(SYNTHETIC_DEFAULTS)}")
        try:
            values[key] = float(text) if key == "concentration" else int(text)
        except ValueError:
            raise DataError(f"'{url}': {key}={text!r} is not a number") from None
    source = MarkovSource(
        int(values["vocab"]), int(values["order"]), int(values["seed"]), float(values["concentration"])
    )
    return source, dict(samples=int(values["samples"]), val_samples=int(values["val_samples"]))
