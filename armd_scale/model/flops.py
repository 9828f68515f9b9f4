"""Training FLOPs per token, counted the way the implementation runs.

Matmul FLOPs only (2 per multiply-add), with attention counted densely (every query against every
key of its call), as SDPA with a mask and `FlopCounterMode` count them; a test checks this formula
against `torch.utils.flop_counter.FlopCounterMode` within 5%. Training = 3x forward (the backward pass
computes gradients for both inputs and weights of every matmul).

ARMD vs AR: the two-stream layers (all but the last) run queries, output projection and MLP on 2N rows
against N keys; the last two-stream layer runs only the query stream; prefix aggregation adds two
N x N products and neighbour attention one N x N product per head. MFU uses these counts with a
peak-FLOPs table keyed by device name.
"""

from __future__ import annotations

from ..model_config import ModelConfig
from .layers import mlp_hidden


def _layer_flops(cfg: ModelConfig, q_rows: int, kv_rows: int, keys: int) -> float:
    """Forward FLOPs of one Block call: q/o/MLP on q_rows, k/v on kv_rows, attention q_rows x keys."""
    d, f = cfg.d_model, mlp_hidden(cfg.d_model, cfg.mlp_ratio, cfg.mlp)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * 2 * d * f
    return q_rows * (4 * d * d + mlp) + kv_rows * 4 * d * d + q_rows * keys * 4 * d


def transformer_forward_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of a plain stack of L self-attention layers on N rows (ar, mdlm)."""
    n = seq_len
    return cfg.n_layers * _layer_flops(cfg, n, n, n) + 2 * n * cfg.d_model * cfg.vocab_size


def armd_forward_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of ARMD: two streams in the first L2 - 1 layers, the query stream alone in the
    last two-stream layer, block-causal layers, prefix aggregation and neighbour attention."""
    n, d = seq_len, cfg.d_model
    two = cfg.two_stream_layers
    total = (two - 1) * _layer_flops(cfg, 2 * n, n, n)  # both streams
    total += _layer_flops(cfg, n, n, n)  # last two-stream layer: G queries only
    total += (cfg.n_layers - two) * _layer_flops(cfg, n, n, n)  # block-causal layers
    total += 2 * n * n * cfg.d_pe + 2 * n * n * d if cfg.prefix_agg != "none" else 0  # prefix aggregation
    total += 2 * n * cfg.d_pe * d if cfg.positional_start else 0  # position-conditioned start
    total += 2 * cfg.neighbour_heads * n * n * d  # neighbour attention: weights @ embeddings per head
    return total + 2 * n * d * cfg.vocab_size


# For callers that hold a config and no model (dry runs, MFU): a model answers `model.forward_flops`.
_FORWARD_FLOPS = {"armd": armd_forward_flops, "ar": transformer_forward_flops, "mdlm": transformer_forward_flops}


def forward_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs for one sequence of `seq_len` tokens."""
    if cfg.arch not in _FORWARD_FLOPS:
        raise ValueError(f"no FLOP formula for model.arch='{cfg.arch}'")
    return _FORWARD_FLOPS[cfg.arch](cfg, seq_len)


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 3.0 * forward_flops(cfg, seq_len) / seq_len


# Dense peak FLOP/s per device for MFU (no 2:4 sparsity; fp32 is the non-tensor rate), matched by
# substring of torch.cuda.get_device_name(), first match wins: more specific names come first
# ("GB200" before "B200"; "GH200" matches "H200", the same Hopper GPU).
# Sources (published figures; sparse figures halved where only those are given):
# - B200: NVIDIA HGX platform page, HGX B200 (8 GPUs): FP16/BF16 36 PFLOPS sparse, FP32 600 TFLOPS
#   -> 2.25 PFLOPS dense and 75 TFLOPS per GPU (https://www.nvidia.com/en-us/data-center/hgx/).
# - GB200: NVIDIA GB200 NVL72 page (72 GPUs): FP16/BF16 360 PFLOPS sparse, FP32 6,480 TFLOPS
#   -> 2.5 PFLOPS dense and 90 TFLOPS per GPU (https://www.nvidia.com/en-us/data-center/gb200-nvl72/).
# - MI300X: AMD Instinct MI300X data sheet: FP16/BF16 1,307.4 TFLOPS dense (2,614.9 with sparsity),
#   FP32 163.4 TFLOPS (https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html);
#   ROCm builds of torch report "AMD Instinct MI300X".
# - H100/H200 SXM, A100, A10G, L40S, L4, V100: the NVIDIA data sheets of each GPU.
PEAK_FLOPS = {
    "GB200": {"bf16": 2500e12, "fp16": 2500e12, "fp32": 90e12},
    "B200": {"bf16": 2250e12, "fp16": 2250e12, "fp32": 75e12},
    "MI300X": {"bf16": 1307.4e12, "fp16": 1307.4e12, "fp32": 163.4e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "A10G": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "V100": {"bf16": 0.0, "fp16": 125e12, "fp32": 15.7e12},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak dense FLOP/s for a device name and precision, or None when unknown (MFU not reported)."""
    for key, table in PEAK_FLOPS.items():
        if key in device_name:
            value = table.get(precision)
            return value or None
    return None
