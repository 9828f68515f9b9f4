"""KV-cached decoding for ARMD and the AR baseline (docs/GENERATION.md).

Both decoders expose one call,

    logits = decoder.step(commit_tokens, commit_positions, target_positions)

which (a) commits the tokens of the last block and (b) returns the logits of the next block's
targets, in one forward call. All rows of a batch share the block structure of a step (the same
number of commit and target tokens); positions may differ per row.

What the ARMD cache holds, and why it is enough:
- per two-stream layer l < L2s: K/V of the *content stream* X of every committed token. The X stream
  of a token depends only on tokens of its own and earlier blocks, so it never changes once the
  token is committed. Layer L2s-1 only needs X as keys, so X itself is propagated through layers
  0..L2s-2 only.
- per causal layer: K/V computed from the *query stream* G at committed positions. A token's G
  never depends on its own content, so the K/V computed while it was a target is exactly what the
  full forward uses once the token is known. They are written into the cache at prediction time
  ("pending") and become committed when the next step commits those same positions: no recompute.
- the prefix-aggregation state S = sum_i PE[pos i]^T X0[i] ([d_pe, d]) and the count of tokens in
  it: G0[n] = start(pos n) + PE[pos n] @ S (/ count for the mean).
- with neighbour attention (model/neighbour.py): the embeddings X0 and positions of committed tokens,
  which its content-free softmax over relative positions reads for each new target.

A commit whose positions are not the previous step's targets (a prompt, the known tokens of an
infill, or any caller-chosen block) is a *cold* commit: the same forward call also runs those
tokens' G rows as targets of their own block, with a mask, so their causal-layer K/V exist. Warm
steps need no mask at all: every cached key is visible to every new query.

Cache tensors are preallocated to `max_len` and written in place; a step costs O(new rows x cached
rows) attention plus per-row work, never a recompute of past tokens.

Where the work happens. The cache (model/kv_cache.py) and the step (`ARMDModel.decode_step`,
`ARModel.decode_step`) belong to the model: a step calls the model's own `Block`s, `Attention`s and
query-input code, so there is one copy of the forward arithmetic. This module is the orchestration
around it: input checks, room in the cache, whether a commit is warm or cold (the host-side positions
of the last targets), and the forward-call count. tests/generate/test_one_forward.py keeps it so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..model import Model
from ..model.armd import ARMDModel, ARModel
from ..model.kv_cache import ARCache, ARMDCache


class _Decoder(ABC):
    """Shared bookkeeping: shapes, input checks, the forward-call counter."""

    def __init__(self, model: ARMDModel | ARModel, batch_size: int, max_len: int | None):
        cfg = model.cfg
        self.model = model
        self.batch_size = batch_size
        self.max_len = cfg.max_seq_len if max_len is None else max_len
        if not 1 <= self.max_len <= cfg.max_seq_len:
            raise ValueError(f"max_len={self.max_len} must be in [1, model.max_seq_len={cfg.max_seq_len}]")
        self.device = next(model.parameters()).device
        self.forward_calls = 0
        self.pending: torch.Tensor | None = None  # the last step's target positions (host)

    cache: ARMDCache | ARCache  # the model's decoding state, built by each subclass

    @property
    def n_committed(self) -> int:
        return self.cache.n_committed

    def _check(self, commit_tokens, commit_positions, target_positions) -> tuple[torch.Tensor, ...]:
        """Default missing parts to empty [B, 0], validate shapes and positions, and return
        (tokens, commit positions, target positions) on the model's device plus both position tensors on
        the host. Positions are validated and compared (warm or cold step) on the host: a sampler that
        passes host positions (as `generate` does) costs no device synchronisation per step."""
        empty = torch.empty(self.batch_size, 0, dtype=torch.long)
        commit_tokens = empty if commit_tokens is None else commit_tokens
        commit_positions = empty if commit_positions is None else commit_positions.cpu()
        target_positions = empty if target_positions is None else target_positions.cpu()
        named = (
            ("commit_tokens", commit_tokens),
            ("commit_positions", commit_positions),
            ("target_positions", target_positions),
        )
        for name, t in named:
            if t.dim() != 2 or t.shape[0] != self.batch_size:
                raise ValueError(f"{name} must be [batch={self.batch_size}, k], got {tuple(t.shape)}")
        if commit_tokens.shape != commit_positions.shape:
            shapes = f"{tuple(commit_tokens.shape)} and {tuple(commit_positions.shape)}"
            raise ValueError(f"commit_tokens and commit_positions shapes differ: {shapes}")
        limit = self.model.cfg.max_seq_len
        for name, t in (("commit_positions", commit_positions), ("target_positions", target_positions)):
            if t.numel() and ((t < 0) | (t >= limit)).any():
                raise ValueError(f"{name} must lie in [0, model.max_seq_len={limit})")
        move = {"device": self.device, "non_blocking": True}
        return (
            commit_tokens.to(**move),
            commit_positions.to(**move),
            target_positions.to(**move),
            commit_positions,
            target_positions,
        )

    @torch.inference_mode()
    def step(
        self,
        commit_tokens: torch.Tensor | None,
        commit_positions: torch.Tensor | None,
        target_positions: torch.Tensor | None,
    ) -> torch.Tensor:
        """Commit one block and return logits [B, T, V] for the next block's target positions."""
        tokens, cpos, tpos, cpos_host, tpos_host = self._check(commit_tokens, commit_positions, target_positions)
        c, t = cpos.shape[1], tpos.shape[1]
        cached = self._continues(cpos_host, t)
        self._room(self.n_committed + c + t)
        if self._computes(c, t, cached):
            self.forward_calls += 1
        # each subclass pairs its model with that model's own cache (decode_cache): a pairing mypy cannot see
        logits = self.model.decode_step(self.cache, tokens, cpos, tpos, cached)  # type: ignore[arg-type]
        self.pending = tpos_host.clone() if t else None
        return logits

    @abstractmethod
    def _continues(self, commit_host: torch.Tensor, targets: int) -> bool:
        """Whether this step continues the last one (the model's `warm`/`reuse` flag of decode_step)."""

    def _computes(self, commits: int, targets: int, cached: bool) -> bool:
        """Whether the step runs the model (counted in forward_calls)."""
        return True

    def _room(self, needed: int) -> None:
        """Refuse a step before it changes any state, rather than fail half-way through the layers."""
        if needed > self.max_len:
            raise ValueError(f"decoding needs {needed} cache rows but the cache holds max_len={self.max_len}")


class ARMDDecoder(_Decoder):
    """Cached decoding for `ARMDModel` (`ARMDModel.decode_step` over a `kv_cache.ARMDCache`)."""

    model: ARMDModel
    cache: ARMDCache

    def __init__(self, model: ARMDModel, batch_size: int, max_len: int | None = None):
        super().__init__(model, batch_size, max_len)
        self.cache = model.decode_cache(batch_size, self.max_len)

    def _continues(self, commit_host: torch.Tensor, targets: int) -> bool:
        """A warm step: nothing committed, or the last step's targets, whose query-stream K/V are cached."""
        return commit_host.shape[1] == 0 or (self.pending is not None and torch.equal(self.pending, commit_host))


class ARDecoder(_Decoder):
    """An ordinary KV cache for `ARModel` (`ARModel.decode_step`): one row per generation index."""

    model: ARModel
    cache: ARCache

    def __init__(self, model: ARModel, batch_size: int, max_len: int | None = None):
        super().__init__(model, batch_size, max_len)
        self.cache = model.decode_cache(batch_size, self.max_len)

    def _continues(self, commit_host: torch.Tensor, targets: int) -> bool:
        """Whether the commit starts with the token last predicted, whose row the cache already holds."""
        if targets > 1:
            raise ValueError(f"arch 'ar' predicts one token per step (single-token blocks); got {targets} targets")
        pending = self.pending
        return commit_host.shape[1] > 0 and pending is not None and torch.equal(pending, commit_host[:, :1])

    def _computes(self, commits: int, targets: int, cached: bool) -> bool:
        return commits + targets > int(cached)  # a reused row alone needs no forward call


def make_decoder(model: Model, batch_size: int, max_len: int | None = None) -> ARMDDecoder | ARDecoder:
    """The cached decoder for a model's architecture."""
    if isinstance(model, ARMDModel):
        return ARMDDecoder(model, batch_size, max_len)
    if isinstance(model, ARModel):
        return ARDecoder(model, batch_size, max_len)
    raise TypeError(f"no cached decoder for {type(model).__name__}; expected ARMDModel or ARModel")
