"""Activation memory of one training micro-batch, counted the way the implementation runs.

What is counted: the tensors autograd keeps from the forward pass for the backward pass (the peak of
a step is these plus model states plus the transient buffers of whichever op runs; transients are not
counted). tests/model/test_memory.py measures exactly this with `torch.autograd.graph.saved_tensors_hooks`
on CPU and finds the formula within 2% for every arch in fp32 and bf16 (5% with dense masks).

Notation: T = B x N tokens of a micro-batch, d model width, f MLP hidden width (SwiGLU), h heads,
V vocabulary, e bytes per element of the compute dtype (4 fp32, 2 bf16/fp16), L layers, L2 the
two-stream layers of ARMD. Per `Block` call with R query rows and K key/value rows:

    self-attention (K = R):         2 norm(R)          + (3 R + 2 R) d e + 4 R f e + 4 R h
    separate key rows (ARMD):       2 norm(R) + norm(K) + (3 R + 2 K) d e + 4 R f e + 4 R h
    norm(R) = (8 + e) R d + 4 R

norm(R): RMSNorm computes in fp32 and keeps its input and the normalised rows in fp32 (in 16-bit
the input is an fp32 copy), its output in the compute dtype and the fp32 RMS statistic. 3 R d: q,
the attention output and its re-laid-out copy before `wo`; 2 K d: k and v; 4 R f: the SwiGLU gate
pre-activation, its SiLU, the up projection and their product; 4 R h: the fused attention's
log-sum-exp (fp32). Fused attention kernels (flash, memory-efficient, FlexAttention, the CPU flash
kernel) keep no N x N score matrix; the dense boolean masks of the sdpa backend for multi-token
blocks add 4 B N^2 bytes (the two-stream, strict and causal masks, built once per forward).

Per model:
- ar, mdlm: L self-attention calls with R = T.
- armd: L2 - 1 two-stream calls (R = 2T, K = T), one query-only call (R = K = T rows, kept apart),
  L - L2 self-attention calls (R = T); prefix aggregation keeps the N x N weights and visibility
  per sequence, B N^2 (e + 1) bytes, plus two gathers of the PE rows, 2 T d_pe e.
- armd neighbour attention (model/neighbour.py, H = model.neighbour_heads heads, replicated under
  tensor parallelism): the int64 relative-position index and the visibility mask, 9 B N^2; per head
  the softmax weights and the masked weights, 2 H B N^2 e (directional: one [N, N + 1] softmax,
  H B N (N + 1) e, and no row mask), the head outputs H T d e and, with more than one head, the
  embeddings broadcast over heads for the batched matmul, H T d e. At N = 1024 with 4 heads this is
  25 MiB of N x N terms per sequence in bf16, 8x the prefix aggregation's N x N weights.
- head: the final norm norm(T), the fp32 log-softmax of the logits 4 T V (and in 16-bit the fp32 copy
  of the logits is not kept); token ids 8 T per embedding lookup; rotary tables.

With `parallel.activation_checkpointing` each layer keeps only its inputs (3 T d e for a two-stream
call's [X; G] and X, 2 T d e for the query-only call, T d e otherwise) and one layer's activations
are rebuilt at a time during the backward pass, so the layers cost sum(inputs) + max(one layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig
from .layers import mlp_hidden

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class ActivationEstimate:
    """Bytes autograd keeps for one micro-batch on one GPU."""

    layers: int  # all layer calls, without activation checkpointing
    layers_checkpointed: int  # the same with activation checkpointing
    other: int  # embeddings, prefix aggregation, masks, head and loss

    @property
    def total(self) -> int:
        return self.layers + self.other

    @property
    def total_checkpointed(self) -> int:
        return self.layers_checkpointed + self.other


def _norm(rows: int, d: int, e: int) -> int:
    """RMSNorm computes in fp32: it keeps its input and the normalised rows in fp32, its output in the
    compute dtype, and the fp32 RMS statistic."""
    return (8 + e) * rows * d + 4 * rows


def _block(cfg: ModelConfig, rows: int, keys: int | None, e: int, heads: int) -> int:
    """Saved bytes of one Block call: `rows` query rows, `keys` separate key rows (None = self-attention)."""
    d, f = cfg.d_model, mlp_hidden(cfg.d_model, cfg.mlp_ratio, cfg.mlp)
    mlp = (4 * f if cfg.mlp == "swiglu" else 2 * f + d) * rows * e  # gelu: up output and its activation
    kv = rows if keys is None else keys
    attention = (3 * rows + 2 * kv) * d * e + 4 * rows * heads  # q, out, out re-laid; k, v; log-sum-exp
    norms = 2 * _norm(rows, d, e) + (0 if keys is None else _norm(keys, d, e))
    return norms + attention + mlp


def activation_bytes(
    cfg: ModelConfig,
    micro_batch: int,
    seq_len: int,
    precision: str,
    *,
    multi_token_blocks: bool = False,
    tp: int = 1,
) -> ActivationEstimate:
    """Saved activations of one micro-batch of `micro_batch` x `seq_len` tokens (see the module docstring).

    multi_token_blocks: the step's order has blocks of several tokens (sbp, diffusion), so the sdpa
    backend keeps dense masks. tp: tensor-parallel degree (the attention heads and MLP columns of a
    layer are split; the norms and residual rows are not, a conservative reading).
    """
    e = DTYPE_BYTES[precision]
    b, n, d = micro_batch, seq_len, cfg.d_model
    t = b * n
    heads = max(1, cfg.n_heads // tp)
    calls: list[tuple[int, int | None, int]] = []  # (rows, keys, checkpointed inputs in rows x d)
    if cfg.arch == "armd":
        two = cfg.two_stream_layers
        calls += [(2 * t, t, 3 * t)] * (two - 1)
        calls.append((t, t, 2 * t))
        calls += [(t, None, t)] * (cfg.n_layers - two)
    else:
        calls += [(t, None, t)] * cfg.n_layers
    per_call = [_block(cfg, rows, keys, e, heads) for rows, keys, _ in calls]
    layers = sum(per_call)
    checkpointed = sum(inputs * d * e for _, _, inputs in calls) + max(per_call)

    head_dim = d // cfg.n_heads
    other = _norm(t, d, e)  # final norm
    other += 4 * t * cfg.vocab_size + 16 * t  # fp32 log-softmax of the logits, targets
    other += 8 * t + 2 * t * head_dim * e  # token ids of the embedding lookup, rotary cos/sin
    if cfg.arch == "armd":
        other += b * n * n * (e + 1) + 2 * t * cfg.d_pe * e + 16 * t  # prefix aggregation, its index rows
        other += neighbour_bytes(cfg, b, n, e)
        other += 4 * t * head_dim * e  # rotary tables of the two-stream calls ([X; G] rows)
        if multi_token_blocks and cfg.attention_backend == "sdpa":
            other += 4 * b * n * n
    return ActivationEstimate(layers=layers, layers_checkpointed=checkpointed, other=other)


def neighbour_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, e: int) -> int:
    """What neighbour attention keeps for the backward pass (module docstring): its scores are dense
    [B, H, N, N], whatever the attention backend, so at long sequences this is the term that grows."""
    heads, b, n, d = cfg.neighbour_heads, micro_batch, seq_len, cfg.d_model
    if cfg.arch != "armd" or heads == 0:
        return 0
    kept = 9 * b * n * n + heads * b * n * d * e * (2 if heads > 1 else 1)  # index + mask; outputs (+ broadcast)
    if cfg.neighbour_kind == "directional":
        return kept + heads * b * n * (n + 1) * e  # one softmax over the keys and "nothing"
    return kept + 2 * heads * b * n * n * e + b * n  # softmax and masked weights; the empty-row mask
