"""Sampling schedules on top of the cached decoders (docs/GENERATION.md).

A `DecodePlan` says what is known up front (prompt or infill tokens, committed as the first block)
and which positions are generated together at each later step. One loop runs every plan:

    for positions in plan.blocks:                      # one forward call per block
        logits = decoder.step(last_tokens, last_positions, positions)
        last_tokens = sample(logits); last_positions = positions

so the forward-call count of a plan is `len(plan.blocks)`; the known block rides along with the
first call. Plans:
- `sequential_plan`: one token per step in any order (l2r = AR decoding); N calls for N tokens.
- `sbp_plan`: strided block-parallel with S streams over the positions after an optional prompt:
  S stream heads one at a time, then position j of every stream together: S + N/S - 1 calls.
- `infill_plan`: known tokens at arbitrary positions first, then the unknown positions left to
  right (streams=1) or in SBP order over the unknown positions (which need not be contiguous).
- `order_plan`: any (order, block) from `armd_scale.model.generation_orders`, e.g. a diffusion(T) schedule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..model import Model
from ..model.generation_orders import sbp_pattern
from ..rng import seeded, uniform
from .cache import make_decoder
from .reference import FullForwardDecoder


@dataclass
class DecodePlan:
    """What to decode: known tokens (first block) and the positions of each later block.

    known_tokens/known_positions: [B, K] (K may be 0). blocks: list of [B, k_t] position tensors;
    every row has the same k_t (the block structure is shared by the batch; positions may differ).
    """

    length: int
    known_tokens: torch.Tensor
    known_positions: torch.Tensor
    blocks: list[torch.Tensor] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.known_positions.shape[0]

    @property
    def forward_calls(self) -> int:
        return len(self.blocks)

    def order_and_block(self, single_token_blocks: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The plan as a model `(order, block)`: known tokens are block 0, then one block per step.

        Scoring a sample with `model(tokens, *plan.order_and_block())` reproduces the logits it was
        drawn from. single_token_blocks=True gives every known token its own block (arch `ar`).
        """
        parts = [self.known_positions.cpu()] + [blk.cpu() for blk in self.blocks]
        order = torch.cat(parts, dim=1)
        if single_token_blocks:
            if any(blk.shape[1] > 1 for blk in self.blocks):
                raise ValueError("this plan has multi-token blocks; it has no single-token-block form")
            return order, torch.arange(order.shape[1]).expand_as(order).clone()
        k = self.known_positions.shape[1]
        ids = [torch.zeros(k, dtype=torch.long)] + [
            torch.full((blk.shape[1],), i + (k > 0), dtype=torch.long) for i, blk in enumerate(self.blocks)
        ]
        return order, torch.cat(ids).expand_as(order).clone()

    def validate(self) -> None:
        """Every position 0..length-1 must be known or generated exactly once in every row."""
        b = self.batch_size
        if self.known_tokens.shape != self.known_positions.shape:
            raise ValueError(
                f"known_tokens {tuple(self.known_tokens.shape)} and known_positions "
                f"{tuple(self.known_positions.shape)} must have the same shape [batch, K]"
            )
        for i, blk in enumerate(self.blocks):
            if blk.dim() != 2 or blk.shape[0] != b or blk.shape[1] == 0:
                raise ValueError(f"plan block {i} must be [batch={b}, k>0] positions, got {tuple(blk.shape)}")
        every = torch.cat([self.known_positions.cpu()] + [blk.cpu() for blk in self.blocks], dim=1)
        expected = torch.arange(self.length).expand(b, self.length)
        if every.shape[1] != self.length or not torch.equal(every.sort(dim=1).values, expected):
            raise ValueError(f"the plan must cover positions 0..{self.length - 1} exactly once in every row")


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [B, N] in text order
    forward_calls: int
    seconds: float
    diffusion_steps: int | None = None  # reverse-process steps, where the sampler was ancestral (mdlm)


def _batched(t: torch.Tensor | None, batch_size: int, name: str) -> torch.Tensor:
    if t is None:
        return torch.empty(batch_size, 0, dtype=torch.long)
    t = torch.as_tensor(t, dtype=torch.long)
    if t.dim() == 1:
        t = t.expand(batch_size, -1)
    if t.dim() != 2 or t.shape[0] != batch_size:
        raise ValueError(f"{name} must be [len] or [batch={batch_size}, len], got {tuple(t.shape)}")
    return t.clone()


def _prompt_part(prompt, length: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = _batched(prompt, batch_size, "prompt")
    p = tokens.shape[1]
    if p > length:
        raise ValueError(f"prompt of {p} tokens is longer than the sample length {length}")
    return tokens, torch.arange(p).expand(batch_size, p).clone()


def sequential_plan(length: int, batch_size: int = 1, order=None, prompt=None) -> DecodePlan:
    """One token per step. order: [M] or [B, M] permutation of the non-prompt positions (default l2r)."""
    known_tokens, known_positions = _prompt_part(prompt, length, batch_size)
    p = known_tokens.shape[1]
    order = torch.arange(p, length) if order is None else order
    order = _batched(order, batch_size, "order")
    plan = DecodePlan(length, known_tokens, known_positions, [order[:, k : k + 1] for k in range(order.shape[1])])
    plan.validate()
    return plan


def _sbp_blocks(positions: torch.Tensor, streams: int) -> list[torch.Tensor]:
    """SBP over a sorted list of positions [B, M] (contiguous or not): S heads, then S at a time."""
    m = positions.shape[1]
    if m == 0:
        return []
    if streams < 1 or m % streams:
        raise ValueError(f"SBP needs the number of generated positions ({m}) to be a multiple of streams={streams}")
    order, block = sbp_pattern(m, streams)
    ordered = positions[:, order]
    return [ordered[:, block == b] for b in range(int(block.max()) + 1)]


def sbp_plan(length: int, streams: int, batch_size: int = 1, prompt=None) -> DecodePlan:
    """SBP with S streams over the positions after the prompt: S + (N - P)/S - 1 steps."""
    known_tokens, known_positions = _prompt_part(prompt, length, batch_size)
    rest = torch.arange(known_tokens.shape[1], length).expand(batch_size, -1)
    plan = DecodePlan(length, known_tokens, known_positions, _sbp_blocks(rest, streams))
    plan.validate()
    return plan


def infill_plan(tokens: torch.Tensor, known: torch.Tensor, streams: int = 1) -> DecodePlan:
    """Known tokens first (one block), then the unknown positions l2r (streams=1) or in SBP order.

    tokens: [B, N] (values at unknown positions are ignored); known: bool [B, N] or [N], with the
    same number of known positions in every row.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, length], got {tuple(tokens.shape)}")
    b, n = tokens.shape
    known = torch.as_tensor(known, dtype=torch.bool).expand(b, n).cpu()
    counts = known.sum(dim=1)
    if not torch.all(counts == counts[0]):
        raise ValueError(f"every row needs the same number of known positions, got {counts.tolist()}")
    k = int(counts[0])
    known_positions = known.nonzero()[:, 1].view(b, k)
    unknown = (~known).nonzero()[:, 1].view(b, n - k)
    known_tokens = tokens.cpu().gather(1, known_positions)
    plan = DecodePlan(n, known_tokens, known_positions, _sbp_blocks(unknown, streams))
    plan.validate()
    return plan


def order_plan(order: torch.Tensor, block: torch.Tensor) -> DecodePlan:
    """A plan from any (order, block) pair; all rows must share the block structure."""
    if not torch.equal(block, block[:1].expand_as(block)):
        raise ValueError("decoding a batch needs the same block structure in every row")
    b, n = order.shape
    empty = torch.empty(b, 0, dtype=torch.long)
    ids = block[0]
    plan = DecodePlan(n, empty, empty.clone(), [order[:, ids == i] for i in range(int(ids.max()) + 1)])
    plan.validate()
    return plan


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw one token per row of logits [..., V] by inverting the CDF at one uniform per row.

    dtype is the precision of the softmax and the CDF: float64 avoids the low-probability tail
    shift that float32 sampling causes (docs/EVALUATION.md). temperature 0 means argmax. top_p keeps the
    smallest set of most likely tokens whose mass reaches top_p (always at least one).
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got temperature={temperature}, top_p={top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.to(dtype) / temperature, dim=-1)
    index = None
    if top_p < 1:  # nucleus: sort, keep tokens whose preceding mass is below top_p
        probs, index = probs.sort(dim=-1, descending=True)
        probs = probs * ((probs.cumsum(dim=-1) - probs) < top_p)
    cdf = probs.cumsum(dim=-1)
    # drawn on the generator's device and moved (armd_scale/rng.py): a seed gives the same tokens on any device
    u = uniform(*cdf.shape[:-1], 1, generator=generator, device=cdf.device, dtype=dtype) * cdf[..., -1:]
    choice = torch.searchsorted(cdf, u, right=True)
    # rounding can put u at the very top of the CDF: stay on the last token with nonzero mass
    last_nonzero = (probs > 0).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    choice = torch.minimum(choice, last_nonzero)
    return (choice if index is None else index.gather(-1, choice)).squeeze(-1)


def generate(
    model: Model,
    plan: DecodePlan,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> SampleResult:
    """Run a plan: one forward call per block, sampling every target of a block independently.

    use_cache=False re-runs the full model every step (the reference and the benchmark baseline);
    with the same generator both paths give the same tokens up to float rounding of the logits.
    """
    plan.validate()
    device = next(model.parameters()).device
    if generator is None:
        generator = seeded(0 if seed is None else seed)
    b, n = plan.batch_size, plan.length
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    decoder = make_decoder(model, b, n) if use_cache else FullForwardDecoder(model, b, n)
    # Positions stay on the host for the decoder (no device sync per step); tokens stay on the device.
    out = torch.zeros(b, n, dtype=torch.long, device=device)
    commit_tokens = plan.known_tokens.to(device)
    commit_positions = plan.known_positions.cpu()
    out.scatter_(1, commit_positions.to(device), commit_tokens)
    for positions in plan.blocks:
        positions = positions.cpu()
        logits = decoder.step(commit_tokens, commit_positions, positions)
        commit_tokens = sample_logits(
            logits, temperature=temperature, top_p=top_p, generator=generator, dtype=sample_dtype
        )
        commit_positions = positions
        out.scatter_(1, positions.to(device, non_blocking=True), commit_tokens)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return SampleResult(out, decoder.forward_calls, seconds)


def sample_sequential(model, length: int, *, batch_size: int = 1, order=None, prompt=None, **kw) -> SampleResult:
    """Sequential decoding in `order` (default left to right, i.e. AR decoding)."""
    return generate(model, sequential_plan(length, batch_size, order, prompt), **kw)


def sample_sbp(model, length: int, streams: int, *, batch_size: int = 1, prompt=None, **kw) -> SampleResult:
    """Strided block-parallel decoding with S streams after an optional prompt."""
    return generate(model, sbp_plan(length, streams, batch_size, prompt), **kw)


def sample_infill(model, tokens: torch.Tensor, known: torch.Tensor, *, streams: int = 1, **kw) -> SampleResult:
    """Fill the unknown positions around known tokens (l2r, or SBP with `streams` > 1)."""
    return generate(model, infill_plan(tokens, known, streams), **kw)


def sample_reference(model, plan: DecodePlan, **kw) -> SampleResult:
    """The no-cache reference: the same plan and sampling, re-running the full model every step."""
    return generate(model, plan, use_cache=False, **kw)
