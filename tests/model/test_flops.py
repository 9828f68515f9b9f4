"""flops.py agrees with torch's FlopCounterMode on a real forward + backward."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from armd_scale.model import build_model, order_loss
from armd_scale.model.flops import peak_flops, training_flops_per_token
from armd_scale.model.generation_orders import make_order

from .conftest import tiny_model_config


@pytest.mark.parametrize("arch", ["armd", "ar"])
@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("n_layers", [2, 6])
def test_training_flops_match_flop_counter(arch, mlp, n_layers):
    cfg = tiny_model_config(arch, mlp=mlp, n_layers=n_layers, vocab_size=300, d_model=64, max_seq_len=64)
    model = build_model(cfg)
    batch, n = 2, 48
    tokens = torch.randint(0, 300, (batch, n))
    order, block = make_order("random", batch, n, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    # The math SDPA kernel decomposes into matmuls the counter sees (the fused CPU kernel is not counted).
    with counter, sdpa_kernel(SDPBackend.MATH):
        order_loss(model(tokens, order, block), tokens, order).backward()
    measured = counter.get_total_flops()
    predicted = training_flops_per_token(cfg, n) * batch * n
    assert abs(measured - predicted) / measured < 0.05


def test_armd_costs_more_than_ar_and_less_than_twice():
    ar = tiny_model_config("ar", n_layers=12, d_model=768, n_heads=12, vocab_size=50304, max_seq_len=1024)
    armd = tiny_model_config("armd", n_layers=12, d_model=768, n_heads=12, vocab_size=50304, max_seq_len=1024)
    ratio = training_flops_per_token(armd, 1024) / training_flops_per_token(ar, 1024)
    assert 1.2 < ratio < 1.6


def test_peak_flops_table():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("Some CPU", "bf16") is None


@pytest.mark.parametrize(
    "name, precision, peak",
    [
        ("NVIDIA B200", "bf16", 2250e12),
        ("NVIDIA B200", "fp32", 75e12),
        ("NVIDIA GB200", "bf16", 2500e12),  # not B200's entry, although "B200" is a substring
        ("NVIDIA GB200", "fp16", 2500e12),
        ("AMD Instinct MI300X", "bf16", 1307.4e12),
        ("AMD Instinct MI300X", "fp32", 163.4e12),
        ("NVIDIA GH200 480GB", "bf16", 989e12),
        ("Tesla V100-SXM2-32GB", "bf16", None),  # no bf16 tensor cores: no MFU rather than a wrong one
    ],
)
def test_peak_flops_of_current_accelerators(name, precision, peak):
    assert peak_flops(name, precision) == peak
