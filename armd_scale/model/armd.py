"""The ARMD model (docs/ARCHITECTURE.md, Forward pass) and the autoregressive baseline.

Contract shared by every architecture:

    logits = model(tokens, order, block)     # logits[b, k] predicts tokens[b, order[b, k]]

`logits[b, k]` depends only on tokens at positions `order[b, j]` with `block[b, j] < block[b, k]`
and on positions (never contents) of anything. The whole computation happens in the *generation
frame*: tokens are gathered into generation order and carry their original positions along.

Forward pass, top to bottom:
1. X0 = embedding of the tokens in generation order (the content stream).
2. G0 = s + W_s PE[pos n] + sum_{i: block[i] < block[n]} <PE[pos n], PE[pos i]> X0[i] + N(n): prefix
   aggregation, the strictly causal input of the query stream (s is a learned start vector so the first
   block is not 0), plus neighbour attention N (model/neighbour.py), a sharp content-free path to the
   nearest revealed tokens (AR's input shift under the left-to-right order). Computed a chunk of query
   rows at a time and, in training, rebuilt in the backward pass, so no N x N term is kept
   (model/query_input.py).
3. Two-stream layers: X attends to X under Mc; G attends to X under Msc; both streams share weights.
   The X output of the last two-stream layer is never read, so that layer runs the G stream only.
4. Block-causal layers on G (Mc), final norm, LM head tied to the embedding.

With document ids (`forward(..., doc=)`, data.document_mask) every mask and G0 term above also
requires the same document, and positions count from each document's first token, so a document's
logits equal those of the document alone in a window (docs/ARCHITECTURE.md, Document masking).
Decoding a packed window with the cache is decoding each document with its own cache.

Cached decoding (`decode_step`, docs/GENERATION.md) runs these same modules on the new rows of one
step with a `kv_cache.ARMDCache`: the layers append their keys to it and G0 reads the running state
of `query_input.QueryInputCache`. generate/cache.py only checks inputs and keeps the step's books.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model_config import ModelConfig
from .attention import prepare
from .flops import armd_forward_flops, transformer_forward_flops
from .generation_orders import l2r_order
from .kv_cache import ARCache, ARMDCache, block_mask
from .layers import Block, init_weights
from .masks import causal_spec, document_positions, strict_spec, two_stream_spec
from .memory import ActivationEstimate, activation_bytes
from .neighbour import NeighbourAttention
from .pe_init import initial_pos_table
from .query_input import QUERY_CHUNK_ROWS, cached_query_rows, query_input
from .rope import RotaryEmbedding
from .vocab import mask_padded_vocab


class _Transformer(nn.Module):
    """Embedding, rotary tables, a stack of `Block`s, final norm and (tied) LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.layers = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.mlp, cfg.norm_eps) for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.activation_checkpointing = False

    def _run_layer(self, layer: nn.Module, *args) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _mask(self, spec, like: torch.Tensor):
        return prepare(spec, self.cfg.attention_backend, like.device, like.dtype)

    def head(self, g: torch.Tensor) -> torch.Tensor:
        return mask_padded_vocab(self.lm_head(self.final_norm(g)), self.cfg.tokenizer_vocab_size)

    def num_params(self, exclude_embedding: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embedding and name.startswith("embed")):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def _check_inputs(self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor) -> None:
        if tokens.dim() != 2 or order.shape != tokens.shape or block.shape != tokens.shape:
            raise ValueError(
                f"tokens {tuple(tokens.shape)}, order {tuple(order.shape)} and block {tuple(block.shape)} "
                "must all be [batch, seq_len]"
            )
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds model.max_seq_len={self.cfg.max_seq_len}")

    # -- architecture facts: the other layers ask the model instead of switching on model.arch ------

    # "exact": every score is an exact conditional log-likelihood; "bound": an ELBO (masked diffusion).
    likelihood_kind: ClassVar[Literal["exact", "bound"]] = "exact"
    # Whether model(tokens, order, block) accepts blocks of several tokens (AR refuses them: a block's
    # own tokens would leak through its shifted input).
    multi_token_blocks: ClassVar[bool] = True
    # How armd_scale.generate samples it: "blocks" = block by block through the shared contract with
    # a KV cache (generate/cache.py); "ancestral" = the masked-diffusion reverse process (generate/mdlm.py).
    sampler: ClassVar[Literal["blocks", "ancestral"]] = "blocks"
    # What training minimises (train/objective.py): the order loss, or the continuous-time MDLM loss.
    objective: ClassVar[Literal["orders", "masked_diffusion"]] = "orders"
    # The id that marks a masked input position, for models that take one (mdlm); None elsewhere.
    mask_id: int | None = None
    # Whether stock causal-LM code can run it (a transformers LlamaForCausalLM: plain causal attention over
    # the tokens before, see checkpoints/hf_mapping.py): the AR baseline only.
    causal_lm: ClassVar[bool] = False
    # Whether forward takes document ids (`doc`) and keeps every term inside its document (data.document_mask).
    documents: ClassVar[bool] = False

    @property
    def parallel_decoding(self) -> bool:
        """Several tokens per forward call from the cache (SBP streams, infilling in SBP order)."""
        return self.sampler == "blocks" and self.multi_token_blocks

    def forward_flops(self, seq_len: int) -> float:
        """Forward matmul FLOPs of one sequence, counted as the implementation runs (model/flops.py)."""
        return transformer_forward_flops(self.cfg, seq_len)

    def training_flops_per_token(self, seq_len: int) -> float:
        """3x forward (the backward pass computes gradients of inputs and weights), per token."""
        return 3.0 * self.forward_flops(seq_len) / seq_len

    def activation_bytes(
        self, micro_batch: int, seq_len: int, precision: str, *, multi_token_blocks: bool = False, tp: int = 1
    ) -> ActivationEstimate:
        """What autograd keeps for one micro-batch (model/memory.py)."""
        return activation_bytes(self.cfg, micro_batch, seq_len, precision, multi_token_blocks=multi_token_blocks, tp=tp)

    def no_decay_matrices(self) -> list[nn.Parameter]:
        """Matrices that must not take weight decay (an architecture declares its own; none here)."""
        return []

    def weight_decay_split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(decay, no_decay) over the trainable parameters, each once (tied weights count once).

        Matrices (linear weights, embeddings) decay; vectors (norm scales, start and mask vectors)
        never do, nor the matrices `no_decay_matrices` names by reference (position tables, score
        tables: decay would pull them towards a flat kernel)."""
        exempt = {id(p) for p in self.no_decay_matrices()}
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        seen: set[int] = set()
        for p in self.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 and id(p) not in exempt else no_decay).append(p)
        return decay, no_decay


class ARMDModel(_Transformer):
    """Two-stream strictly causal bottom half + block-causal top half (docs/ARCHITECTURE.md, Forward pass)."""

    documents = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.n_two_stream = cfg.two_stream_layers
        d_pe = cfg.d_pe
        # Stored as table / pe_lr_scale so that Adam's steps move the table pe_lr_scale times faster.
        self.pe_scale = cfg.pe_lr_scale or 1.0
        table = initial_pos_table(cfg.max_seq_len, d_pe, cfg.pe_init, cfg.pe_init_tau)
        self.pos_table = nn.Parameter(table / self.pe_scale, requires_grad=cfg.pe_lr_scale > 0)
        self.start = nn.Parameter(torch.randn(cfg.d_model) * cfg.init_std)
        # Position-conditioned start: without it a first-block query knows nothing about *where* it
        # is (RoPE is relative and there are no keys to attend to), so p(x_n | nothing) could not
        # depend on n. Positions, unlike contents, may be seen by every query.
        self.start_proj = nn.Linear(d_pe, cfg.d_model, bias=False) if cfg.positional_start else None
        self.start_pos_table = None
        if cfg.positional_start and cfg.positional_start_table == "separate":  # W_s reads its own table
            self.start_pos_table = nn.Parameter(table.clone() / self.pe_scale, requires_grad=cfg.pe_lr_scale > 0)
        self.prefix_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.prefix_norm else None
        self.query_pos_table = None
        if cfg.prefix_query_table:  # row n starts as row n - 1 of the key table (row 0 as row 0)
            shifted = torch.cat([table[:1], table[:-1]])
            self.query_pos_table = nn.Parameter(shifted / self.pe_scale, requires_grad=cfg.pe_lr_scale > 0)
        init_weights(self, cfg.init_std, cfg.n_layers)
        # Built after init_weights, which would overwrite its deliberate initial values.
        self.neighbour = (
            NeighbourAttention(cfg.d_model, cfg.neighbour_heads, cfg.max_seq_len, cfg.neighbour_kind)
            if cfg.neighbour_heads
            else None
        )
        if self.start_proj is not None and cfg.positional_start_init == "zero":
            nn.init.zeros_(self.start_proj.weight)
        if self.prefix_norm is not None:  # the normalised sum starts at the embeddings' scale, like AR's input
            nn.init.constant_(self.prefix_norm.weight, cfg.init_std)
        self.query_chunk_rows = QUERY_CHUNK_ROWS  # G0's query rows per chunk (model/query_input.py)

    # -- pieces reused by cached decoding ---------------------------------------------------------

    def pe(self, pos: torch.Tensor) -> torch.Tensor:
        """Rows of the prefix-aggregation PE table (the key side) for positions pos."""
        return self.pos_table[pos] * self.pe_scale

    def pe_query(self, pos: torch.Tensor) -> torch.Tensor:
        """Query-side rows of the prefix sum: the same table, or its own with prefix_query_table."""
        return self.pe(pos) if self.query_pos_table is None else self.query_pos_table[pos] * self.pe_scale

    def query_start(self, pos: torch.Tensor, empty_prefix: torch.Tensor | bool = True) -> torch.Tensor:
        """The content-free part of G0 for target positions pos [B, T]: s (+ W_s PE[pos]).

        empty_prefix [B, T] (or a bool for all rows): whether the query has nothing revealed before it;
        with positional_start_scope=first_block only those rows get the positional term."""
        start = self.start.expand(*pos.shape, -1)
        if self.start_proj is not None:
            table = self.pos_table if self.start_pos_table is None else self.start_pos_table
            positional = self.start_proj(table[pos] * self.pe_scale)
            if self.cfg.positional_start_scope == "first_block":
                if isinstance(empty_prefix, bool):
                    empty_prefix = torch.full(pos.shape, empty_prefix, device=pos.device)
                positional = positional * empty_prefix[..., None].to(positional.dtype)
            start = start + positional
        return start

    def finish_aggregate(self, agg: torch.Tensor) -> torch.Tensor:
        """The optional per-query normalisation of the prefix-aggregation sum."""
        return agg if self.prefix_norm is None else self.prefix_norm(agg)

    def prefix_aggregate(
        self, x: torch.Tensor, pos: torch.Tensor, block: torch.Tensor, doc: torch.Tensor | None = None
    ) -> torch.Tensor:
        """G0 = start(pos n) + agg over strictly earlier blocks of <PE[pos n], PE[pos i]> X0[i]
        (+ neighbour attention over the same tokens), `query_chunk_rows` query rows at a time and, in
        training, recomputed in the backward pass so no N x N term is kept (model/query_input.py)."""
        return query_input(self, x, pos, block, doc)

    def forward(
        self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor, doc: torch.Tensor | None = None
    ) -> torch.Tensor:
        """logits [B, N, V] (module docstring). doc [B, N] or None: the document index of each window
        position (`masks.document_ids`, contiguous runs); with it each document is its own any-order
        problem: no attention, prefix-aggregation or query-input term crosses a boundary, and positions
        count from the document's first token (docs/ARCHITECTURE.md, Document masking)."""
        self._check_inputs(tokens, order, block)
        pos, doc_g = order, None
        if doc is not None:
            if doc.shape != tokens.shape:
                raise ValueError(f"doc {tuple(doc.shape)} must match tokens {tuple(tokens.shape)}: [batch, seq_len]")
            pos = torch.gather(document_positions(doc), 1, order)
            doc_g = torch.gather(doc, 1, order)
        x = self.embed(torch.gather(tokens, 1, order))
        g = self.prefix_aggregate(x, pos, block) if doc_g is None else self.prefix_aggregate(x, pos, block, doc_g)
        rope = self.rope.tables(pos, x.dtype)
        rope2 = (torch.cat([rope[0], rope[0]], dim=2), torch.cat([rope[1], rope[1]], dim=2))

        n = tokens.shape[1]
        both = self._mask(two_stream_spec(block, doc_g), x)
        strict = self._mask(strict_spec(block, doc_g), x)
        causal = self._mask(causal_spec(block, doc_g), x)
        for i, layer in enumerate(self.layers):
            if i < self.n_two_stream - 1:
                xg = self._run_layer(layer, torch.cat([x, g], dim=1), x, rope2, rope, both)
                x, g = xg[:, :n], xg[:, n:]
            elif i == self.n_two_stream - 1:
                g = self._run_layer(layer, g, x, rope, rope, strict)
            else:
                g = self._run_layer(layer, g, None, rope, rope, causal)
        return self.head(g)

    # -- architecture facts (see _Transformer) ----------------------------------------------------

    def forward_flops(self, seq_len: int) -> float:
        return armd_forward_flops(self.cfg, seq_len)

    def no_decay_matrices(self) -> list[nn.Parameter]:
        """The PE tables (decay would flatten the prefix-aggregation kernel) and neighbour attention's
        score table (decay would pull its scores towards uniform attention)."""
        tables = [self.pos_table, self.start_pos_table, self.query_pos_table]
        if self.neighbour is not None:
            tables.append(self.neighbour.rel_bias)
        return [t for t in tables if t is not None]

    def decode_cache(self, batch: int, max_len: int) -> ARMDCache:
        """An empty decoding cache for `decode_step`, in the model's device and dtype."""
        param = self.pos_table
        return ARMDCache(
            self.cfg, self.n_two_stream, self.neighbour is not None, batch, max_len, param.device, param.dtype
        )

    def decode_step(
        self, cache: ARMDCache, tokens: torch.Tensor, cpos: torch.Tensor, tpos: torch.Tensor, warm: bool
    ) -> torch.Tensor:
        """Commit tokens [B, c] at positions cpos and return logits [B, T, V] for targets tpos [B, T].

        The commit is the block after every cached one and the targets the block after it, so on a
        warm step (cpos are the last step's targets, or nothing is committed) every cached key is
        visible to every new row and no mask is needed; the commit's query-stream K/V were written
        when it was predicted. A cold commit also runs its G rows as targets of its own block, under
        masks with block ids cache 0, commit 1, targets 2. Same modules as `forward`, new rows only."""
        n, c, t = cache.n_committed, cpos.shape[1], tpos.shape[1]
        dtype = cache.dtype
        x = self.embed(tokens)
        g_rows = [] if warm else [cached_query_rows(self, cache.query, cpos)]  # before the commit: strict
        cache.query.commit(self, x, cpos)
        g = torch.cat([*g_rows, cached_query_rows(self, cache.query, tpos)], dim=1)
        g_pos = tpos if warm else torch.cat([cpos, tpos], dim=1)
        cg = g.shape[1] - t  # cold-commit G rows in front of the targets
        rope_x, rope_g = self.rope.tables(cpos, dtype), self.rope.tables(g_pos, dtype)
        rope_xg = (torch.cat([rope_x[0], rope_g[0]], dim=2), torch.cat([rope_x[1], rope_g[1]], dim=2))
        both = strict = causal = None
        if not warm:  # query rows: X commit (Mc), G commit (cache only), G targets (cache + commit)
            x_keys, g_keys, b = [0] * n + [1] * c, [0] * n + [1] * c + [2] * t, cache.batch
            both = block_mask([1] * c + [0] * c + [1] * t, x_keys, b, g)
            strict = block_mask([0] * c + [1] * t, x_keys, b, g)
            causal = block_mask([1] * c + [2] * t, g_keys, b, g)
        for kv in cache.g_cache:  # warm: keep the commit's pending query-stream rows; cold: drop them
            kv.truncate(n + (c if warm else 0))
        for i, layer in enumerate(self.layers):
            if i < self.n_two_stream - 1:
                xg = layer(torch.cat([x, g], dim=1), x, rope_xg, rope_x, both, cache.x_cache[i])
                x, g = xg[:, :c], xg[:, c:]
            elif i == self.n_two_stream - 1:
                g = layer(g, x, rope_g, rope_x, strict, cache.x_cache[i])
            else:
                g = layer(g, None, rope_g, rope_g, causal, cache.g_cache[i - self.n_two_stream])
        cache.n_committed = n + c
        return self.head(g[:, cg:])


class ARModel(_Transformer):
    """Plain causal transformer under the same contract (the FLOP-matched baseline).

    Input at generation index k is the token generated at k-1 (a learned start vector at k = 0), with
    causal attention over generation indices; rotary positions are the *target* positions. With the
    l2r order this is an ordinary GPT. Any order with single-token blocks is accepted (an order-blind
    shifted model); multi-token blocks would leak a block's own tokens and are refused.
    """

    multi_token_blocks = False  # the shifted input would leak a block's own tokens
    causal_lm = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.start = nn.Parameter(torch.randn(cfg.d_model) * cfg.init_std)
        init_weights(self, cfg.init_std, cfg.n_layers)

    def shifted_inputs(self, tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        x = self.embed(torch.gather(tokens, 1, order))
        start = self.start.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([start, x[:, :-1]], dim=1)

    def forward(self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        self._check_inputs(tokens, order, block)
        n = tokens.shape[1]
        if not torch.equal(block, torch.arange(n, device=block.device).expand_as(block)):
            raise ValueError("arch 'ar' needs single-token blocks (block[b, k] == k); use arch 'armd' for blocks")
        h = self.shifted_inputs(tokens, order)
        rope = self.rope.tables(order, h.dtype)
        causal = self._mask(causal_spec(l2r_order(tokens.shape[0], n)[1].to(tokens.device)), h)
        for layer in self.layers:
            h = self._run_layer(layer, h, None, rope, rope, causal)
        return self.head(h)

    def decode_cache(self, batch: int, max_len: int) -> ARCache:
        """An empty decoding cache for `decode_step`, in the model's device and dtype."""
        param = self.start
        return ARCache(self.cfg, batch, max_len, param.device, param.dtype)

    def decode_step(
        self, cache: ARCache, tokens: torch.Tensor, cpos: torch.Tensor, tpos: torch.Tensor, reuse: bool
    ) -> torch.Tensor:
        """Commit tokens [B, c] (each its own block) and return logits [B, T, V] for T <= 1 targets.

        Row k of the cache is `forward`'s row k: the token generated at k-1 (the start vector at
        k = 0) at the position of the token it predicts. reuse: the first commit is the last step's
        target, whose row was computed then (pending) and is kept instead of recomputed."""
        n, c, t = cache.n_committed, cpos.shape[1], tpos.shape[1]
        prev = [] if cache.last_token is None else [cache.last_token]
        embeds = self.embed(torch.cat([*prev, tokens], dim=1))
        if cache.last_token is None:
            embeds = torch.cat([self.start.to(cache.dtype).expand(cache.batch, 1, -1), embeds], dim=1)
        skip, row_pos = int(reuse), torch.cat([cpos, tpos], dim=1)
        h, row_pos = embeds[:, skip : row_pos.shape[1]], row_pos[:, skip:]
        q, start = row_pos.shape[1], n + skip
        if c:
            cache.last_token = tokens[:, -1:].clone()
        cache.n_committed = n + c
        if q == 0:
            return h.new_zeros(cache.batch, 0, self.cfg.vocab_size)
        rope = self.rope.tables(row_pos, cache.dtype)
        ids = list(range(start + q))  # causal among the new rows; every cached row is visible
        mask = block_mask(ids[start:], ids, cache.batch, h) if q > 1 else None
        for layer, kv in zip(self.layers, cache.layers, strict=True):
            kv.truncate(start)
            h = layer(h, None, rope, rope, mask, kv)
        return self.head(h[:, q - t :])
