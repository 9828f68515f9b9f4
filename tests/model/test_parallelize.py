"""The tensor-parallel plan: which parameters AutoTP splits, and along which dimension."""

from __future__ import annotations

import re

import pytest

from armd_scale.config import load_config
from armd_scale.model import build_model
from armd_scale.model.parallelize import TP_LAYER_SPECS, partition_dim


@pytest.mark.parametrize("arch", ["armd", "ar", "mdlm"])
def test_tp_plan_covers_every_layer_of_each_arch(arch):
    """q/k/v and MLP up/gate are column-parallel, wo and down row-parallel, everything else replicated."""
    names = [n for n, _ in build_model(load_config(overrides=[f"model.arch={arch}"]).model).named_parameters()]
    kind = {}
    for spec in TP_LAYER_SPECS:
        for name in names:
            if any(re.match(p, name) for p in spec["patterns"]):
                assert name not in kind, f"{name} matched twice"
                kind[name] = spec["partition_type"]
    assert kind["layers.0.attn.wq.weight"] == kind["layers.3.mlp.gate.weight"] == "column"
    assert kind["layers.1.attn.wo.weight"] == kind["layers.2.mlp.down.weight"] == "row"
    assert len(kind) == 4 * 7  # 4 layers x (wq, wk, wv, wo, gate, up, down)
    assert not any(n in kind for n in names if n.startswith(("embed", "pos_table", "start", "final_norm", "mask")))
    # partition_dim agrees: column-parallel splits output features (dim 0), row-parallel input features
    assert {partition_dim(n) for n, k in kind.items() if k == "column"} == {0}
    assert {partition_dim(n) for n, k in kind.items() if k == "row"} == {1}
    assert all(partition_dim(n) is None for n in names if n not in kind)
