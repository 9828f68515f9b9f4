"""An armd_scale model (arch `armd`, or `ar` where no stock Llama fits) for Hugging Face transformers.

This file is copied verbatim into every `armd convert --to hf` folder and loaded by
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`. It needs torch and
transformers only, never armd_scale, and reproduces armd_scale's forward pass operation for
operation (the exporter checks the logits on a fixed batch, fp32, before it writes anything).

Two ways to call the model:

    out = model(input_ids)              # standard: out.logits[b, k] predicts input_ids[b, k + 1],
                                        # left to right, as every transformers causal LM; generate() works
    logits = model(tokens, order, block)  # armd_scale's contract: logits[b, k] predicts tokens[b, order[b, k]]
                                        # from the tokens of strictly earlier blocks (any order, SBP blocks)

The standard form runs the contract on input_ids plus one placeholder position with the
left-to-right order and keeps logits 1..n: position k's query sees only positions < k, so the
placeholder's value is never read. It therefore takes at most max_seq_len - 1 tokens, and does not
give p(first token | nothing), which the contract form does (logits[:, 0]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_armd import ARMDConfig

# -- masks: every mask is a comparison of block indices (key visible iff k_block <= q_limit) ---------


class _Mask:
    """What one attention call may see: per-query limits and per-key blocks, and which fixed pattern it is."""

    def __init__(self, q_limit: torch.Tensor, k_block: torch.Tensor, pattern: str, single_token_blocks: bool):
        self.pattern = pattern
        self.dense: torch.Tensor | None = None
        self.has_key: torch.Tensor | None = None
        if not single_token_blocks:
            allowed = k_block[:, None, None, :] <= q_limit[:, None, :, None]
            self.has_key = allowed.any(dim=-1, keepdim=True)
            self.dense = allowed | ~self.has_key


def _single_token_blocks(block: torch.Tensor) -> bool:
    n = block.shape[1]
    return bool(torch.equal(block, torch.arange(n, device=block.device).expand_as(block)))


def _causal(block: torch.Tensor) -> _Mask:
    return _Mask(block, block, "causal", _single_token_blocks(block))


def _strict(block: torch.Tensor) -> _Mask:
    return _Mask(block - 1, block, "strict", _single_token_blocks(block))


def _two_stream(block: torch.Tensor) -> _Mask:
    return _Mask(torch.cat([block, block - 1], dim=1), block, "two_stream", _single_token_blocks(block))


def _sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: _Mask) -> torch.Tensor:
    """q [B, H, Q, D], k/v [B, H, K, D]. With one token per block the masks are causal patterns and the
    fused causal kernel does the work; otherwise a dense mask (rows with no key give zeros)."""
    if mask.dense is not None and mask.has_key is not None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
        return out.masked_fill(~mask.has_key, 0.0)

    def strict(qq):
        out = torch.zeros_like(qq)
        if qq.shape[2] > 1:
            out[:, :, 1:] = _sdpa_causal(qq[:, :, 1:], k[:, :, :-1], v[:, :, :-1])
        return out

    if mask.pattern == "causal":
        return _sdpa_causal(q, k, v)
    if mask.pattern == "strict":
        return strict(q)
    n = k.shape[2]
    return torch.cat([_sdpa_causal(q[:, :, :n], k, v), strict(q[:, :, n:])], dim=2)


# -- layers ---------------------------------------------------------------------------------------


def _rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [B, 1, T, head_dim/2] of the half-split rotation, computed in float64 then rounded."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    angles = positions.to(torch.float64)[..., None] * inv_freq
    return angles.cos().float().unsqueeze(1).to(dtype), angles.sin().float().unsqueeze(1).to(dtype)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class ARMDMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "swiglu":
            self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class ARMDAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.head_dim = d_model // n_heads
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, d_model, bias=False)
        self.wv = nn.Linear(d_model, d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)

    def forward(self, h_q, h_kv, rope_q, rope_kv, mask: _Mask) -> torch.Tensor:
        q = _apply_rotary(self._heads(self.wq(h_q)), *rope_q)
        k = _apply_rotary(self._heads(self.wk(h_kv)), *rope_kv)
        v = self._heads(self.wv(h_kv))
        out = _attend(q, k, v, mask)
        b, _, t, _ = out.shape
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class ARMDBlock(nn.Module):
    """Pre-norm layer: h + Attn(norm h, norm kv_src), then h + MLP(norm h); kv_src None means h itself."""

    def __init__(self, config: ARMDConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = ARMDAttention(config.d_model, config.n_heads)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = ARMDMLP(config.d_model, config.mlp_hidden, config.mlp)

    def forward(self, h, kv_src, rope_q, rope_kv, mask: _Mask) -> torch.Tensor:
        normed = self.attn_norm(h)
        kv_normed = normed if kv_src is None else self.attn_norm(kv_src)
        h = h + self.attn(normed, kv_normed, rope_q, rope_kv, mask)
        return h + self.mlp(self.mlp_norm(h))


class ARMDNeighbourAttention(nn.Module):
    """Neighbour attention of the query stream's input: H content-free softmax heads over the token
    embeddings of strictly earlier blocks, scored by relative position only (a learned table per head),
    each head scaled per channel by a learned gain and the heads summed. `directional` heads also
    score a "nothing" key (a learned logit per head) whose value is 0, so they may attend to nothing."""

    def __init__(self, d_model: int, heads: int, max_len: int, kind: str):
        super().__init__()
        if kind not in ("symmetric", "directional"):
            raise ValueError(f"neighbour_kind {kind!r}: this code implements 'symmetric' and 'directional'")
        self.max_len = max_len
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * max_len - 1))  # [h, (pos n - pos i) + max_len - 1]
        self.sink = nn.Parameter(torch.zeros(heads)) if kind == "directional" else None
        self.gain = nn.Parameter(torch.zeros(heads, d_model))

    def forward(self, x: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """x [B, K, d] key embeddings, q_pos [B, Q], k_pos [B, K], visible [B, Q, K] -> [B, Q, d]
        (a query with no visible key gets 0)."""
        rel = q_pos[:, :, None] - k_pos[:, None, :] + (self.max_len - 1)
        scores = self.rel_bias[:, rel].transpose(0, 1).to(x.dtype)  # [B, H, Q, K]
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        if self.sink is not None:
            b, h, q, _ = scores.shape
            sink = self.sink.to(x.dtype)[None, :, None, None].expand(b, h, q, 1)
            weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        else:
            weights = torch.softmax(scores, dim=-1)
            weights = weights.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)
        mixed = torch.matmul(weights, x[:, None])  # [B, H, Q, d]
        return (mixed * self.gain.to(x.dtype)[None, :, None, :]).sum(dim=1)


class ARMDNetwork(nn.Module):
    """The network under armd_scale's parameter names (embed, layers.i..., final_norm, lm_head, ...)."""

    def __init__(self, config: ARMDConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(ARMDBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.start = nn.Parameter(torch.zeros(config.d_model))
        if config.arch == "armd":
            table = (config.max_seq_len, config.d_pe)
            # the PE tables are stored divided by pe_lr_scale (a learning-rate reparametrisation in training)
            self.pe_scale = config.pe_lr_scale or 1.0
            self.pos_table = nn.Parameter(torch.zeros(table))
            self.start_proj = nn.Linear(config.d_pe, config.d_model, bias=False) if config.positional_start else None
            separate = config.positional_start and config.positional_start_table == "separate"
            self.start_pos_table = nn.Parameter(torch.zeros(table)) if separate else None
            self.query_pos_table = nn.Parameter(torch.zeros(table)) if config.prefix_query_table else None
            self.prefix_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps) if config.prefix_norm else None
            self.neighbour = None
            if config.neighbour_heads:  # a fresh model's heads start at 0 gain: it adds nothing until trained
                heads, kind = config.neighbour_heads, config.neighbour_kind
                self.neighbour = ARMDNeighbourAttention(config.d_model, heads, config.max_seq_len, kind)
        elif config.arch != "ar":
            raise ValueError(f"arch {config.arch!r}: this code implements arch 'armd' and 'ar' only")

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype):
        cfg = self.config
        return _rotary(positions, cfg.d_model // cfg.n_heads, cfg.rope_theta, dtype)

    def head(self, g: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.final_norm(g))
        real = self.config.tokenizer_vocab_size
        if real is not None and real < logits.shape[-1]:  # vocabulary padding: never a token
            logits[..., real:] = torch.finfo(logits.dtype).min
        return logits

    def forward(self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or order.shape != tokens.shape or block.shape != tokens.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)}, order and block must all be [batch, seq_len]")
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.config.max_seq_len}")
        if self.config.arch == "ar":
            return self._ar(tokens, order, block)
        return self._armd(tokens, order, block)

    def _query_input(self, x: torch.Tensor, pos: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """G0 of every query: s (+ W_s PE[pos n]) + sum over strictly earlier blocks of
        <PEq[pos n], PE[pos i]> X0[i] (optionally a mean, RMS-normalised, or left out)
        + neighbour attention (+ the mean embedding of the previous block)."""
        cfg = self.config
        visible = block[:, None, :] < block[:, :, None]  # [B, query, key]
        g = self.start.expand(*pos.shape, -1)
        if self.start_proj is not None:
            table = self.pos_table if self.start_pos_table is None else self.start_pos_table
            positional = self.start_proj(table[pos] * self.pe_scale)
            if cfg.positional_start_scope == "first_block":  # only queries with nothing revealed before them
                positional = positional * (~visible.any(dim=-1))[..., None].to(positional.dtype)
            g = g + positional
        g = g.to(x.dtype)
        if cfg.prefix_agg != "none":
            pe = self.pos_table[pos] * self.pe_scale
            pe_q = pe if self.query_pos_table is None else self.query_pos_table[pos] * self.pe_scale
            weights = torch.bmm(pe_q, pe.transpose(1, 2)) * visible.to(pe.dtype)
            if cfg.prefix_agg == "mean":
                weights = weights / visible.sum(dim=-1, keepdim=True).clamp(min=1).to(pe.dtype)
            agg = torch.bmm(weights.to(x.dtype), x)
            g = g + (agg if self.prefix_norm is None else self.prefix_norm(agg))
        if self.neighbour is not None:
            g = g + self.neighbour(x, pos, pos, visible)
        if cfg.previous_block_input:
            previous = (block[:, None, :] == block[:, :, None] - 1).to(x.dtype)
            g = g + torch.bmm(previous / previous.sum(dim=-1, keepdim=True).clamp(min=1), x)
        return g

    def _armd(self, tokens, order, block):
        cfg = self.config
        x = self.embed(torch.gather(tokens, 1, order))
        g = self._query_input(x, order, block)
        rope = self._rope(order, x.dtype)
        rope2 = (torch.cat([rope[0], rope[0]], dim=2), torch.cat([rope[1], rope[1]], dim=2))
        n = tokens.shape[1]
        both, strict, causal = _two_stream(block), _strict(block), _causal(block)
        last_two_stream = cfg.n_two_stream_layers - 1
        for i, layer in enumerate(self.layers):
            if i < last_two_stream:
                xg = layer(torch.cat([x, g], dim=1), x, rope2, rope, both)
                x, g = xg[:, :n], xg[:, n:]
            elif i == last_two_stream:
                g = layer(g, x, rope, rope, strict)
            else:
                g = layer(g, None, rope, rope, causal)
        return self.head(g)

    def _ar(self, tokens, order, block):
        n = tokens.shape[1]
        if not torch.equal(block, torch.arange(n, device=block.device).expand_as(block)):
            raise ValueError("arch 'ar' needs single-token blocks (block[b, k] == k)")
        x = self.embed(torch.gather(tokens, 1, order))
        h = torch.cat([self.start.to(x.dtype).expand(x.shape[0], 1, -1), x[:, :-1]], dim=1)
        rope = self._rope(order, h.dtype)
        causal = _causal(torch.arange(n, device=tokens.device).expand(tokens.shape[0], n))
        for layer in self.layers:
            h = layer(h, None, rope, rope, causal)
        return self.head(h)


class ARMDPreTrainedModel(PreTrainedModel):
    config_class = ARMDConfig
    base_model_prefix = "model"
    _no_split_modules = ["ARMDBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 style normal(0.02) for a freshly built model; loaded checkpoints overwrite it."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, ARMDNetwork):
            nn.init.normal_(module.start, std=0.02)
            for name in ("pos_table", "start_pos_table", "query_pos_table"):
                if getattr(module, name, None) is not None:
                    nn.init.normal_(getattr(module, name), std=module.config.d_pe**-0.25)


class ARMDForCausalLM(ARMDPreTrainedModel, GenerationMixin):
    # transformers 5: a dict {tied parameter: its source}, applied only when config.tie_word_embeddings
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: ARMDConfig):
        super().__init__(config)
        self.model = ARMDNetwork(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        order: torch.LongTensor | None = None,
        block: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ):
        if order is not None or block is not None:  # armd_scale's contract: a tensor of logits
            if order is None or block is None:
                raise ValueError("pass both order and block (armd_scale's contract), or neither (left to right)")
            return self.model(input_ids, order, block)
        if input_ids is None:
            raise ValueError("input_ids is required")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padded batches are not supported: pass unpadded input_ids (one length per batch)")
        b, n = input_ids.shape
        if n >= self.config.max_seq_len:
            raise ValueError(
                f"input_ids holds {n} tokens; a left-to-right call takes at most max_seq_len - 1 = "
                f"{self.config.max_seq_len - 1} (one position is the placeholder for the next token)"
            )
        tokens = torch.cat([input_ids, input_ids.new_zeros(b, 1)], dim=1)  # a placeholder no query reads
        positions = torch.arange(n + 1, device=input_ids.device).expand(b, n + 1)
        logits = self.model(tokens, positions, positions)[:, 1:]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}
