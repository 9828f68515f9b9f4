"""`armd train --dry-run`: what a run would be, without training, allocating weights or touching data.

It resolves the config and prints the generated DeepSpeed config, the parameter counts (with and
without the token embedding), training FLOPs per token and per optimizer step, tokens per step, and
per-GPU memory: model states for the ZeRO stage and world size, and the activations of one
micro-batch. The model is built on the `meta` device, so the GPT-2-sized presets cost no memory.

Model states follow the ZeRO paper's accounting (Rajbhandari et al. 2020, section 3.1 and figure 1):
with mixed precision every parameter has 2 bytes of 16-bit weights, 2 of 16-bit gradients and K = 12
of fp32 master weights and Adam moments; in fp32 it is 4 + 4 + K = 8 (no master copy). ZeRO-1
partitions the K bytes over the data-parallel ranks, ZeRO-2 also the gradients, ZeRO-3 also the
weights. Tensor parallelism first splits the column/row-parallel matrices over `parallel.tp`. Beside
it, for 16-bit ZeRO-2/3, DeepSpeed's own estimators (`estimate_zero{2,3}_model_states_mem_needs`
without offload): they count 18 partitioned bytes per parameter (16-bit and fp32 gradients, fp32
weights and moments), so ZeRO-2 comes out 4 P/N above the paper's figure and ZeRO-3, which leaves the
partitioned 16-bit weights out and adds the largest layer gathered at 4 bytes per parameter, 2 P/N +
4 x largest layer above it. Activations are `model/memory.py`'s count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config, dump_config
from ..model import build_model
from ..model.flops import training_flops_per_token
from ..model.memory import activation_bytes
from ..model.parallelize import partition_dim
from .engine import batch_layout, deepspeed_config

GIB = 2**30


@dataclass(frozen=True)
class ParamCounts:
    total: int
    non_embedding: int  # without the token embedding (and the tied LM head, the same matrix)
    tensor_parallel: int  # in matrices that tensor parallelism splits
    largest_layer: int  # the most parameters directly owned by one module (what ZeRO-3 gathers at once)

    def per_rank(self, tp: int) -> int:
        return self.total - self.tensor_parallel + self.tensor_parallel // tp


def count_parameters(cfg: Config) -> ParamCounts:
    """Counts from the model built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    split = sum(p.numel() for name, p in model.named_parameters() if partition_dim(name) is not None)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ParamCounts(model.num_params(), model.num_params(exclude_embedding=True), split, largest)


@dataclass(frozen=True)
class ModelStates:
    """Bytes per GPU of weights, gradients and optimizer states (ZeRO paper accounting)."""

    weights: int
    gradients: int
    optimizer: int
    ema: int = 0  # train.ema_decay > 0: the fp32 EMA of the weights, partitioned as the master weights (train/ema.py)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema


def model_state_bytes(params: int, precision: str, zero_stage: int, dp_world: int, *, ema: bool = False) -> ModelStates:
    """Per-GPU model states for `params` parameters per model-parallel rank, partitioned over `dp_world`
    (with `ema`, 4 more bytes per parameter, partitioned as the optimizer's master weights)."""
    sixteen = precision in ("bf16", "fp16")
    weight_bytes, grad_bytes, optim_bytes = (2, 2, 12) if sixteen else (4, 4, 8)
    return ModelStates(
        weights=params * weight_bytes // (dp_world if zero_stage >= 3 else 1),
        gradients=params * grad_bytes // (dp_world if zero_stage >= 2 else 1),
        optimizer=params * optim_bytes // (dp_world if zero_stage >= 1 else 1),
        ema=params * 4 // (dp_world if zero_stage >= 1 else 1) if ema else 0,
    )


def deepspeed_estimate(params: int, largest_layer: int, precision: str, zero_stage: int, dp_world: int) -> int | None:
    """DeepSpeed's own per-GPU estimate (no offload), where it has one: 16-bit ZeRO-2 and ZeRO-3."""
    if precision not in ("bf16", "fp16") or zero_stage not in (2, 3):
        return None
    if zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=dp_world, cpu_offload=False)[1]
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    return estimate_zero3_model_states_mem_needs(
        params, largest_layer, num_gpus_per_node=dp_world, cpu_offload=False, cpu_offload_params=False
    )[1]


def dry_run(cfg: Config, world_size: int) -> dict[str, Any]:
    """Everything `armd train --dry-run` prints, as a JSON-able dict."""
    layout = batch_layout(cfg, world_size)
    ds = deepspeed_config(cfg, layout)
    counts = count_parameters(cfg)
    tp, precision, stage = cfg.parallel.tp, cfg.parallel.precision, cfg.parallel.zero_stage
    per_rank = counts.per_rank(tp)
    states = model_state_bytes(per_rank, precision, stage, layout.dp_world, ema=cfg.train.ema_decay > 0)
    multi_token = cfg.train.order.kind in ("sbp", "diffusion")
    acts = activation_bytes(
        cfg.model, layout.micro_batch, cfg.data.seq_len, precision, multi_token_blocks=multi_token, tp=tp
    )
    checkpointing = cfg.parallel.activation_checkpointing
    activations = acts.total_checkpointed if checkpointing else acts.total
    flops_per_token = training_flops_per_token(cfg.model, cfg.data.seq_len)
    tokens_per_step = layout.global_batch * cfg.data.seq_len
    return {
        "world_size": world_size,
        "tp": tp,
        "dp_world": layout.dp_world,
        "grad_accum": layout.grad_accum,
        "micro_batch": layout.micro_batch,
        "global_batch": layout.global_batch,
        "seq_len": cfg.data.seq_len,
        "zero_stage": stage,
        "precision": precision,
        "deepspeed_config": ds,
        "params": counts.total,
        "params_non_embedding": counts.non_embedding,
        "params_per_tp_rank": per_rank,
        "largest_layer_params": counts.largest_layer,
        "train_flops_per_token": flops_per_token,
        "tokens_per_step": tokens_per_step,
        "train_flops_per_step": flops_per_token * tokens_per_step,
        "model_states_bytes": {
            "weights": states.weights,
            "gradients": states.gradients,
            "optimizer": states.optimizer,
            "ema": states.ema,
            "total": states.total,
        },
        "deepspeed_estimate_bytes": deepspeed_estimate(
            per_rank, counts.largest_layer, precision, stage, layout.dp_world
        ),
        "activation_bytes": {
            "micro_batch": acts.total,
            "micro_batch_checkpointed": acts.total_checkpointed,
            "activation_checkpointing": checkpointing,
        },
        "total_bytes_per_gpu": states.total + activations,
    }


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f} GiB"


def format_dry_run(cfg: Config, doc: dict[str, Any]) -> str:
    """The report: resolved config, DeepSpeed config, then the figures."""
    states, acts = doc["model_states_bytes"], doc["activation_bytes"]
    ds_estimate = doc["deepspeed_estimate_bytes"]
    checkpointing = acts["activation_checkpointing"]
    lines = [
        "# resolved config",
        dump_config(cfg).rstrip(),
        "",
        "# generated DeepSpeed config",
        json.dumps(doc["deepspeed_config"], indent=1),
        "",
        f"# {cfg.model.arch}: {doc['world_size']} GPU(s) = tp {doc['tp']} x data-parallel {doc['dp_world']}; "
        f"ZeRO-{doc['zero_stage']}, {doc['precision']}",
        f"parameters:              {doc['params']:,} ({doc['params'] / 1e6:,.1f}M); without the token embedding "
        f"{doc['params_non_embedding']:,} ({doc['params_non_embedding'] / 1e6:,.1f}M)",
        f"  per tensor-parallel rank {doc['params_per_tp_rank']:,}; largest layer {doc['largest_layer_params']:,}",
        f"training FLOPs per token: {doc['train_flops_per_token']:.4g} (model/flops.py; 3 x forward, dense attention)",
        f"tokens per optimizer step: {doc['tokens_per_step']:,} = global batch {doc['global_batch']} x seq_len "
        f"{doc['seq_len']} (micro-batch {doc['micro_batch']} x grad_accum {doc['grad_accum']} x dp {doc['dp_world']})",
        f"training FLOPs per step: {doc['train_flops_per_step']:.4g}",
        "memory per GPU:",
        f"  model states (ZeRO-{doc['zero_stage']}): {_gib(states['total'])} = weights {_gib(states['weights'])} "
        f"+ gradients {_gib(states['gradients'])} + optimizer {_gib(states['optimizer'])}"
        + (f" + EMA of the weights {_gib(states['ema'])}" if states["ema"] else ""),
    ]
    if ds_estimate is not None:
        lines.append(f"  DeepSpeed's ZeRO-{doc['zero_stage']} estimate (no offload): {_gib(ds_estimate)}")
    lines += [
        f"  activations of one micro-batch: {_gib(acts['micro_batch'])} without activation checkpointing, "
        f"{_gib(acts['micro_batch_checkpointed'])} with it (parallel.activation_checkpointing="
        f"{str(checkpointing).lower()}; model/memory.py)",
        f"  total (model states + activations, no allocator slack or transient buffers): "
        f"{_gib(doc['total_bytes_per_gpu'])}",
    ]
    return "\n".join(lines)
