"""No-cache reference decoding: every step re-runs the full model on the whole sequence.

It has the same `step` interface as the cached decoders, so the sampler can run either and the two
can be compared token for token. It is the definition the cache must match and the baseline that
`bench/decode.py` times. The model contract takes whole sequences (`order` is a permutation of all
N positions), so each step is one forward over all N positions: positions not yet decided sit in
later blocks with placeholder tokens, which the contract guarantees cannot affect the targets.
"""

from __future__ import annotations

import torch

from ..model import Model


class FullForwardDecoder:
    """Decode by calling `model(tokens, order, block)` once per step (O(N) work per step, no state reuse)."""

    def __init__(self, model: Model, batch_size: int, length: int):
        if length > model.cfg.max_seq_len:
            raise ValueError(f"length {length} exceeds model.max_seq_len={model.cfg.max_seq_len}")
        self.model = model
        self.batch_size = batch_size
        self.length = length
        self.device = next(model.parameters()).device
        # AR accepts single-token blocks only: every committed token is then its own block.
        self.single_token_blocks = not model.multi_token_blocks
        self.tokens = torch.zeros(batch_size, length, dtype=torch.long, device=self.device)
        self.used = torch.zeros(batch_size, length, dtype=torch.bool, device=self.device)
        self.order: list[torch.Tensor] = []
        self.block: list[torch.Tensor] = []
        self.n_blocks = 0
        self.pending: torch.Tensor | None = None
        self.forward_calls = 0

    def _append(self, positions: torch.Tensor) -> None:
        if positions.shape[1] == 0:
            return
        if self.used.gather(1, positions).any():
            raise ValueError("a position was committed or targeted twice")
        k = positions.shape[1]
        if self.single_token_blocks:
            ids = self.n_blocks + torch.arange(k, device=self.device)
            self.n_blocks += k
        else:
            ids = torch.full((k,), self.n_blocks, device=self.device)
            self.n_blocks += 1
        self.order.append(positions)
        self.block.append(ids.expand(self.batch_size, k))
        self.used.scatter_(1, positions, True)

    def _drop_pending(self) -> None:
        positions = self.order.pop()
        self.block.pop()
        self.n_blocks -= positions.shape[1] if self.single_token_blocks else 1
        self.used.scatter_(1, positions, False)
        self.pending = None

    @torch.no_grad()
    def step(
        self,
        commit_tokens: torch.Tensor | None,
        commit_positions: torch.Tensor | None,
        target_positions: torch.Tensor | None,
    ) -> torch.Tensor:
        commit = None
        if commit_positions is not None and commit_positions.shape[1] > 0:
            if commit_tokens is None:
                raise ValueError("commit_positions given without commit_tokens")
            commit = commit_positions.to(self.device)
        if self.pending is not None and not (commit is not None and torch.equal(self.pending, commit)):
            self._drop_pending()  # the last targets were not committed: they are undecided again
        if commit is not None and commit_tokens is not None:
            self.tokens.scatter_(1, commit, commit_tokens.to(self.device))
            if self.pending is None:
                self._append(commit)
        self.pending = None
        if target_positions is None or target_positions.shape[1] == 0:
            return torch.zeros(self.batch_size, 0, self.model.cfg.vocab_size, device=self.device)
        if self.single_token_blocks and target_positions.shape[1] > 1:
            raise ValueError(
                f"arch 'ar' predicts one token per step (single-token blocks); got {target_positions.shape[1]} targets"
            )
        target_positions = target_positions.to(self.device)
        first_target = sum(o.shape[1] for o in self.order)
        self._append(target_positions)
        self.pending = target_positions
        # Undecided positions go last, one block each, in text order.
        rest = (~self.used).nonzero()[:, 1].view(self.batch_size, -1)
        rest_block = self.n_blocks + torch.arange(rest.shape[1], device=self.device).expand_as(rest)
        order = torch.cat(self.order + [rest], dim=1)
        block = torch.cat(self.block + [rest_block], dim=1)
        self.forward_calls += 1
        logits = self.model(self.tokens, order, block)
        return logits[:, first_target : first_target + target_positions.shape[1]]
