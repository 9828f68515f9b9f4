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
  L - L2 self-attention calls (R = T). The query stream's input G0 (prefix aggregation and neighbour
  attention) runs in chunks of C query rows under activation checkpointing (model/query_input.py): it
  keeps only the chunks' shared inputs, X0 and the int64 positions and blocks, T d e + 16 T, and no
  N x N term. (With L2 = 1 in fp32, X0 is also the query-only call's key input, which its norm keeps
  as it is: one storage, counted once.)
- G0's transient (not in the total, like any op's buffers): the backward pass rebuilds one chunk at a
  time, which holds what a dense evaluation of its R = C query rows over K = N keys would keep: the
  prefix weights and the visibility as floats, 2 B R K e, the PE rows of keys and queries,
  (B K + B R) d_pe e (and B R d_pe e more for the positional start's rows), and neighbour attention's
  (H = model.neighbour_heads heads): the int32 relative-position index and the visibility mask,
  5 B R K, the head outputs H B R d e, and per head the softmax and the masked weights, 2 H B R K e
  (directional: one softmax over the keys and "nothing", H B R (K + 1) e, and no empty-row mask,
  B R), plus that chunk's gradient buffers while its backward runs. The options prefix_agg=mean,
  prefix_norm and previous_block_input add a few more [B, R, K] or [B, R, d] terms, not counted.
- head: the final norm norm(T), the fp32 log-softmax of the logits 4 T V (and in 16-bit the fp32 copy
  of the logits is not kept); token ids 8 T per embedding lookup; the rotary cos and sin tables,
  [B, 1, N, d / h / 2] each, T (d / h) e, and for ARMD's two-stream calls those of the [X; G] rows,
  2 T (d / h) e.

With `parallel.activation_checkpointing` each layer keeps only its inputs (3 T d e for a two-stream
call's [X; G] and X, 2 T d e for the query-only call, T d e otherwise) and one layer's activations
are rebuilt at a time during the backward pass, so the layers cost sum(inputs) + max(one layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model_config import ModelConfig
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
    other += (
        8 * t + t * head_dim * e
    )  # token ids of the embedding lookup, rotary cos/sin ([B, 1, N, head_dim / 2] each)
    if cfg.arch == "armd":
        other += query_input_bytes(cfg, b, n, e)
        if cfg.two_stream_layers == 1 and precision == "fp32":  # the query-only call's keys are X0, whose
            other -= t * d * e  # fp32 norm keeps its input itself: the storage G0's chunks keep already
        if cfg.two_stream_layers > 1:
            other += 2 * t * head_dim * e  # rotary tables of the two-stream calls ([X; G] rows)
        if multi_token_blocks and cfg.attention_backend == "sdpa":
            other += 4 * b * n * n
    return ActivationEstimate(layers=layers, layers_checkpointed=checkpointed, other=other)


def query_input_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, e: int) -> int:
    """What G0 keeps for the backward pass in training: only the inputs of its checkpointed chunks, X0
    and the int64 positions and blocks (model/query_input.py); its N x N terms are transient."""
    if cfg.arch != "armd":
        return 0
    t = micro_batch * seq_len
    return t * cfg.d_model * e + 16 * t


def query_input_chunk_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, e: int, rows: int) -> int:
    """What one chunk of `rows` query rows of G0 holds while the backward pass rebuilds it (module
    docstring): the transient that replaced the dense N x N terms, without its gradient buffers.
    rows >= seq_len: what a dense evaluation of G0 would keep besides its inputs."""
    if cfg.arch != "armd":
        return 0
    b, r, k = micro_batch, min(rows, seq_len), seq_len
    held = 0
    if cfg.prefix_agg != "none":  # weights and visibility as floats; PE rows of the keys and the queries
        held += 2 * b * r * k * e + (b * k + b * r) * cfg.d_pe * e
    if cfg.positional_start:  # W_s's input rows
        held += b * r * cfg.d_pe * e
    return held + neighbour_bytes(cfg, b, r, k, e)


def neighbour_bytes(cfg: ModelConfig, micro_batch: int, rows: int, keys: int, e: int) -> int:
    """What neighbour attention keeps for the backward pass of one call with `rows` queries and `keys`
    keys (module docstring): its scores are dense [B, H, rows, keys] whatever the attention backend,
    which is why training evaluates it a chunk of rows at a time."""
    heads, b, r, k, d = cfg.neighbour_heads, micro_batch, rows, keys, cfg.d_model
    if cfg.arch != "armd" or heads == 0:
        return 0
    held = 5 * b * r * k + heads * b * r * d * e  # int32 index + mask; the head outputs
    if cfg.neighbour_kind == "directional":
        return held + heads * b * r * (k + 1) * e  # one softmax over the keys and "nothing"
    return held + 2 * heads * b * r * k * e + b * r  # softmax and masked weights; the empty-row mask
