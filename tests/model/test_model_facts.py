"""Architecture facts the models answer for the other layers: FLOPs, activation memory, and which
parameters take weight decay (the split written out by name for tiny models)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from armd_scale.model import build_model, model_class
from armd_scale.model.flops import training_flops_per_token
from armd_scale.model.generation_orders import make_order
from armd_scale.model.memory import activation_bytes

from .conftest import tiny_model, tiny_model_config

LAYER_MATRICES = [f"layers.{i}.{m}.weight" for i in range(2) for m in ("attn.wq", "attn.wk", "attn.wv", "attn.wo")] + [
    f"layers.{i}.mlp.{m}.weight" for i in range(2) for m in ("gate", "up", "down")
]
NORMS = ["final_norm.weight"] + [f"layers.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "mlp_norm")]


def _split_names(model) -> tuple[set[str], set[str]]:
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)  # a tied weight under its first name (embed, not lm_head)
    decay, no_decay = model.weight_decay_split()
    return {names[id(p)] for p in decay}, {names[id(p)] for p in no_decay}


@pytest.mark.parametrize(
    "arch, options, decay_extra, no_decay_extra",
    [
        ("ar", {}, [], ["start"]),
        ("mdlm", {}, [], ["mask_embed"]),
        (
            "armd",
            dict(
                neighbour_heads=2,
                neighbour_kind="directional",
                positional_start=True,
                positional_start_table="separate",
                prefix_query_table=True,
            ),
            # neighbour.gain is a matrix of head gains and decays; rel_bias is a score table and does not
            ["neighbour.gain", "start_proj.weight"],
            ["start", "pos_table", "start_pos_table", "query_pos_table", "neighbour.rel_bias", "neighbour.sink"],
        ),
    ],
)
def test_weight_decay_split_written_out(arch, options, decay_extra, no_decay_extra):
    decay, no_decay = _split_names(tiny_model(arch, n_layers=2, **options))
    assert decay == {"embed.weight", *LAYER_MATRICES, *decay_extra}
    assert no_decay == {*NORMS, *no_decay_extra}


def test_frozen_tables_are_in_neither_group_and_tied_weights_count_once():
    model = tiny_model("armd", n_layers=2, pe_lr_scale=0.0)
    decay, no_decay = model.weight_decay_split()
    assert not any(p is model.pos_table for p in decay + no_decay)
    assert sum(p is model.embed.weight for p in decay) == 1  # lm_head.weight is the same tensor
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in decay + no_decay} == trainable and len(decay) + len(no_decay) == len(trainable)


@pytest.mark.parametrize("arch", ["armd", "ar", "mdlm"])
def test_forward_flops_match_the_flop_counter(arch):
    """The model's own count against an independent one: torch's FlopCounterMode on a real forward."""
    cfg = tiny_model_config(arch, n_layers=4, vocab_size=300, d_model=64, max_seq_len=64)
    model = build_model(cfg).eval()
    batch, n = 2, 48
    tokens = torch.randint(0, 300, (batch, n))
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        if arch == "mdlm":
            model(tokens)  # one denoising pass: what training runs
        else:
            order, block = make_order("random", batch, n, generator=torch.Generator().manual_seed(0))
            model(tokens, order, block)
    measured = counter.get_total_flops()
    assert abs(measured - model.forward_flops(n) * batch) / measured < 0.05
    assert model.training_flops_per_token(n) == pytest.approx(3 * model.forward_flops(n) / n)
    # a caller with a config only gets the same number from the model package
    assert model.training_flops_per_token(n) == training_flops_per_token(cfg, n)


def test_activation_bytes_are_the_models_and_armd_keeps_more():
    cfgs = {arch: tiny_model_config(arch, n_layers=4, d_model=64, max_seq_len=64) for arch in ("armd", "ar")}
    est = {arch: build_model(cfg).activation_bytes(2, 32, "bf16") for arch, cfg in cfgs.items()}
    assert est["armd"] == activation_bytes(cfgs["armd"], 2, 32, "bf16")
    assert est["armd"].total > est["ar"].total


def test_model_class_names_the_arch_and_refuses_unknown_ones():
    assert model_class(tiny_model_config("mdlm")).objective == "masked_diffusion"
    cfg = tiny_model_config("ar")
    object.__setattr__(cfg, "arch", "gpt")
    with pytest.raises(ValueError, match="model.arch='gpt' is not available"):
        model_class(cfg)
