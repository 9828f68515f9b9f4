"""Configuration of an ARMD (or armd_scale AR) model exported for Hugging Face transformers.

`armd convert --to hf` ships this file, with model_config.py beside it, into every custom-code folder
(hf_code_files.py: copied from armd_scale with only the package-relative imports rewritten), where
`AutoConfig.from_pretrained(folder, trust_remote_code=True)` loads it without armd_scale installed.

Its fields are not listed here: they are ModelConfig's exported fields under their config.json keys
(each field's `hf` declaration in model_config.py; the same names but tie_embeddings ->
tie_word_embeddings). A key a config.json lacks was written before the field existed and takes the
field's legacy value (else its default), the rule armd_scale applies to its own saved configs.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from ...model_config import declarations


class ARMDConfig(PretrainedConfig):
    model_type = "armd"

    def __init__(self, **kwargs):
        values = {d.hf: kwargs.pop(d.hf, d.missing_value) for d in declarations() if d.hf is not None}
        for key, value in values.items():
            setattr(self, key, value)
        # the names generic transformers code looks for
        self.hidden_size = values["d_model"]
        self.num_hidden_layers = values["n_layers"]
        self.num_attention_heads = values["n_heads"]
        self.max_position_embeddings = values["max_seq_len"]
        super().__init__(**kwargs)
        self.tie_word_embeddings = values["tie_word_embeddings"]  # after super(), which sets its own default
