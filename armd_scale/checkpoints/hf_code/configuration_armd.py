"""Configuration of an ARMD (or armd_scale AR) model exported for Hugging Face transformers.

This file is copied verbatim into every `armd convert --to hf` folder and loaded by
`AutoConfig.from_pretrained(folder, trust_remote_code=True)`. It needs torch and transformers only,
never armd_scale. The fields are armd_scale's `ModelConfig` under the same names (see the model
card's table), plus `mlp_hidden` (the MLP width the run's `mlp_ratio` resolved to).
"""

from transformers import PretrainedConfig


class ARMDConfig(PretrainedConfig):
    model_type = "armd"

    def __init__(
        self,
        arch: str = "armd",
        vocab_size: int = 512,
        n_layers: int = 4,
        d_model: int = 128,
        n_heads: int = 4,
        max_seq_len: int = 128,
        n_two_stream_layers: int = 2,
        d_pe: int = 64,
        prefix_agg: str = "sum",
        positional_start: bool = True,
        mlp: str = "swiglu",
        mlp_hidden: int = 344,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        tokenizer_vocab_size: int | None = None,
        tie_word_embeddings: bool = True,
        # The query stream's input options. Their defaults here mean "off" (the paper's input), so a
        # folder whose config.json predates them loads as what it is.
        neighbour_heads: int = 0,
        neighbour_kind: str = "symmetric",
        positional_start_table: str = "shared",
        positional_start_scope: str = "all",
        prefix_norm: bool = False,
        prefix_query_table: bool = False,
        previous_block_input: bool = False,
        pe_lr_scale: float = 1.0,
        **kwargs,
    ):
        self.arch = arch
        self.vocab_size = vocab_size
        self.n_layers = n_layers
        self.d_model = d_model
        self.n_heads = n_heads
        self.max_seq_len = max_seq_len
        self.n_two_stream_layers = n_two_stream_layers
        self.d_pe = d_pe
        self.prefix_agg = prefix_agg
        self.positional_start = positional_start
        self.mlp = mlp
        self.mlp_hidden = mlp_hidden
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.neighbour_heads = neighbour_heads
        self.neighbour_kind = neighbour_kind
        self.positional_start_table = positional_start_table
        self.positional_start_scope = positional_start_scope
        self.prefix_norm = prefix_norm
        self.prefix_query_table = prefix_query_table
        self.previous_block_input = previous_block_input
        self.pe_lr_scale = pe_lr_scale
        # the names generic transformers code looks for
        self.hidden_size = d_model
        self.num_hidden_layers = n_layers
        self.num_attention_heads = n_heads
        self.max_position_embeddings = max_seq_len
        super().__init__(**kwargs)
        self.tie_word_embeddings = tie_word_embeddings  # after super(), which would set its own default
