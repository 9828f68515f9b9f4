"""The masked-diffusion baseline (`model.arch: mdlm`, docs/ARCHITECTURE.md, Baselines): a bidirectional transformer that
denoises a partly masked sequence, trained with the continuous-time MDLM loss.

Same blocks as `armd` and `ar` (pre-norm RMSNorm, SwiGLU/GELU MLP, RoPE on text positions, tied
head), so FLOP-matched comparisons differ only in what the comparison is about. No time
conditioning: with the SUBS parameterisation p(x_j | z_t) does not depend on t (RADD, Ou et al. 2024).

The mask token. Id `vocab_size` (one past the real vocabulary; `model.mask_id`) marks masked positions
in a noisy input. Its embedding is a separate learned vector (`mask_embed`), not a row of the tied
embedding table, so the head scores only the `vocab_size` real tokens: the model can never predict the
mask, and checkpoints keep the same `embed`/`lm_head` shapes as the other archs. Data never holds the
id: shards hold ids < vocab_size (the trainer checks the tokenizer fits model.vocab_size).

Two ways to call it, both through `forward` so DeepSpeed's hooks (ZeRO-3 gathering) always run:

    logits = model(noisy)                  # one bidirectional pass; logits[b, j] predicts x_j at
                                           # masked positions (meaningless where j is not masked)
    logits = model(tokens, order, block)   # the shared contract (docs/ARCHITECTURE.md, Contract): logits[b, k] predicts
                                           # tokens[b, order[b, k]] from exactly the tokens of strictly
                                           # earlier blocks: every block >= block[b, k] is masked.

The second form is exact for any order but costs one pass per distinct block index (N passes for a
left-to-right order), so training and validation use the first form through `train/objective.py`.
It makes tools written for the contract (likelihood under an order, equivalence tests) work on mdlm.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model_config import ModelConfig
from ..rng import uniform
from . import masked_diffusion as md
from .armd import _Transformer
from .layers import init_weights
from .masks import full_spec


class MDLMModel(_Transformer):
    """Bidirectional denoiser with a mask token; see the module docstring for the calling contract."""

    likelihood_kind = "bound"  # scores are ELBOs: the exact conditionals cost a pass per block
    sampler = "ancestral"  # the reverse diffusion process (generate/mdlm.py), not the KV-cached plans
    objective = "masked_diffusion"  # trained on noisy inputs, one pass per batch (train/objective.py)
    mask_id: int

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.mask_id = cfg.vocab_size
        self.mask_embed = nn.Parameter(torch.randn(cfg.d_model) * cfg.init_std)
        init_weights(self, cfg.init_std, cfg.n_layers)

    # -- forward --------------------------------------------------------------------------------

    def forward(
        self, tokens: torch.Tensor, order: torch.Tensor | None = None, block: torch.Tensor | None = None
    ) -> torch.Tensor:
        if order is None and block is None:
            return self.denoise(tokens)
        if order is None or block is None:
            raise ValueError("pass either noisy tokens alone or tokens, order and block (got only one of order/block)")
        self._check_inputs(tokens, order, block)
        return self.conditionals(tokens, order, block)

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        """Logits [B, N, vocab_size] for noisy tokens [B, N] (mask_id where masked), in text order."""
        if noisy.dim() != 2:
            raise ValueError(f"noisy tokens must be [batch, seq_len], got {tuple(noisy.shape)}")
        b, n = noisy.shape
        if n > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {n} exceeds model.max_seq_len={self.cfg.max_seq_len}")
        masked = noisy == self.mask_id
        x = self.embed(noisy.masked_fill(masked, 0))
        # The true token at a masked position never reaches the network: its row is the mask vector.
        x = torch.where(masked[..., None], self.mask_embed.to(x.dtype), x)
        positions = torch.arange(n, device=noisy.device).expand(b, n)
        rope = self.rope.tables(positions, x.dtype)
        full = self._mask(full_spec(b, n, noisy.device), x)
        for layer in self.layers:
            x = self._run_layer(layer, x, None, rope, rope, full)
        return self.head(x)

    def conditionals(self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """The shared contract: one denoising pass per block index v, with every token of blocks >= v masked;
        the logits of block v's tokens come from that pass. Returned in generation order like armd/ar."""
        block_at = torch.empty_like(block).scatter_(1, order, block)  # block index of each text position
        out = None
        for v in range(int(block.max()) + 1):
            logits = self.denoise(tokens.masked_fill(block_at >= v, self.mask_id))
            logits = torch.gather(logits, 1, order[..., None].expand(-1, -1, logits.shape[-1]))
            out = logits if out is None else torch.where((block == v)[..., None], logits, out)
        assert out is not None  # block indices start at 0: there is always a first pass
        return out

    # -- objective and bound (convenience over masked_diffusion with this model as denoiser); the sampler
    # is decoding and lives in generate/mdlm.py --

    def loss(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Continuous-time MDLM loss: mean over tokens of the one-draw NELBO estimate, with antithetic
        rates across the batch. The trainer computes the same thing through the engine (objective.py)."""
        rates = md.stratified_rates(tokens.shape[0], 0, generator)
        uniforms = uniform(*tokens.shape, generator=generator, device=tokens.device, dtype=torch.float64)
        return md.nelbo_estimate(self, tokens, rates, uniforms, self.mask_id).sum() / tokens.numel()

    @torch.no_grad()
    def elbo(self, tokens: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative T-step ELBO per sequence [B] (nats, an upper bound on -log p(x)), summing every
        step's term: T forward calls (see masked_diffusion.discrete_nelbo)."""
        return md.discrete_nelbo(self, tokens, steps, self.mask_id, generator)

    @torch.no_grad()
    def continuous_elbo(
        self, tokens: torch.Tensor, *, samples: int = 1, seed: int = 0, first_index: int = 0
    ) -> torch.Tensor:
        """Negative continuous-time ELBO per sequence [B] (nats, an upper bound on -log p(x) in
        expectation; see masked_diffusion): `samples` stratified draws of the time per sequence, K forward
        calls. Row i's noise depends only on (seed, first_index + i), not on the batch it is in."""
        indices = range(first_index, first_index + tokens.shape[0])
        rates, uniforms = md.continuous_draws(seed, indices, samples, tokens.shape[1])
        return md.continuous_nelbo(self, tokens, rates, uniforms, self.mask_id)
