"""An armd_scale model (arch `armd`, or `ar` where no stock Llama fits) for Hugging Face transformers.

`armd convert --to hf` ships this file with the package's own model modules beside it (armd.py,
layers.py, attention.py, masks.py, ..., model_config.py), copied from armd_scale with only their
package-relative imports rewritten to sibling imports (checkpoints/hf_code_files.py), so it runs where
armd_scale is not installed. The forward pass is therefore armd_scale's own code, not a second copy:
this file is only the transformers glue (config -> ModelConfig, the standard left-to-right call, the
loss, generation). The exporter still checks the logits on a fixed batch, fp32, before it writes anything.

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

from ...model.armd import ARMDModel, ARModel
from ...model.rope import RotaryEmbedding
from ...model_config import from_hf
from .configuration_armd import ARMDConfig

NETWORKS: dict[str, type[ARMDModel] | type[ARModel]] = {"armd": ARMDModel, "ar": ARModel}


def network(config: ARMDConfig) -> ARMDModel | ARModel:
    """armd_scale's model for the exported config (its weights as the package initialises them)."""
    mc = from_hf(config.to_dict())
    mc.validate()
    if mc.arch not in NETWORKS:
        raise ValueError(f"arch {mc.arch!r}: this code implements arch 'armd' and 'ar' only")
    return NETWORKS[mc.arch](mc)


class ARMDPreTrainedModel(PreTrainedModel):
    config_class = ARMDConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        """armd_scale's model initialises its parameters itself; transformers may build it on the meta
        device and then re-create what the weights file does not hold, which is only the rotary
        tables (buffers that are not saved): recompute them."""
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(module.cos_table.shape[1] * 2, module.max_len, self.config.rope_theta)
            module.cos_table = fresh.cos_table.to(module.cos_table.device)
            module.sin_table = fresh.sin_table.to(module.sin_table.device)


class ARMDForCausalLM(ARMDPreTrainedModel, GenerationMixin):
    # transformers 5: a dict {tied parameter: its source}, applied only when config.tie_word_embeddings
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: ARMDConfig):
        super().__init__(config)
        self.model = network(config)
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
