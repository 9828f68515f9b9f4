"""How the models are sharded: the tensor-parallel plan, beside the model it describes.

Every architecture (armd, ar, mdlm) is built from the same `layers.Block`, so one plan covers all:
DeepSpeed AutoTP splits q/k/v and the MLP up/gate projections column-parallel (output features, dim
0 of the weight) and the attention output and MLP down projections row-parallel (input features, dim
1); embeddings, the tied LM head, norms, start vectors and the prefix-aggregation table stay
replicated. The training engine passes `TP_LAYER_SPECS` to AutoTP, the dry run counts the parameters
it splits, and the checkpoint reader merges tensor-parallel shards with `partition_dim`, so a change
of the plan is one edit here.
"""

from __future__ import annotations

import re
from typing import Any

COLUMN, ROW = "column", "row"

# DeepSpeed AutoTP `partition_config.layer_specs`: regexes on parameter names.
TP_LAYER_SPECS: list[dict[str, Any]] = [
    {"patterns": [r".*\.attn\.w[qkv]\.weight$", r".*\.mlp\.(gate|up)\.weight$"], "partition_type": COLUMN},
    {"patterns": [r".*\.attn\.wo\.weight$", r".*\.mlp\.down\.weight$"], "partition_type": ROW},
]

# Universal-checkpoint metadata for our parameters: none is a fused concatenation that would need
# special TP merge rules. Set on the module before deepspeed.initialize; AutoTP replaces it with its
# own (per-parameter row/column and replication patterns) when tensor parallelism is on.
UNIVERSAL_CHECKPOINT_INFO: dict[str, Any] = {"universal_checkpoint_version": 0.4}

_DIMS = {COLUMN: 0, ROW: 1}


def partition_dim(name: str) -> int | None:
    """The dimension along which tensor parallelism splits parameter `name`; None if replicated."""
    for spec in TP_LAYER_SPECS:
        if any(re.match(p, name) for p in spec["patterns"]):
            return _DIMS[spec["partition_type"]]
    return None
