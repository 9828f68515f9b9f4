"""Open any checkpoint path the tools accept, and read its weights without a DeepSpeed engine.

Accepted paths, and what they resolve to:
- a run directory (RUN_DIR): its newest complete checkpoint folder;
- a DeepSpeed checkpoint folder (RUN_DIR/checkpoints/step_N: meta.json + COMPLETE + engine files);
- a universal folder written by `armd convert --to universal` (meta.json + COMPLETE + universal/<tag>/),
  or DeepSpeed's universal tag folder itself (`.../universal/step_N`, meta.json two levels up);
- an export directory (model.safetensors + config.json).

Opening a DeepSpeed or universal folder checks every pickle-based file in it with the restricted
unpickler first, so each tool refuses a tampered folder up front, naming the file.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..pretrained import EXPORT_CONFIG, EXPORT_WEIGHTS, resolve_checkpoint
from ..train.checkpoint import META, read_meta
from ..train.safe_load import assert_weights_only_loadable, safe_torch_load
from ..train.universal import UNIVERSAL, full_state_dict, merge_tp_shards, read_universal, universal_tag_dir

Kind = Literal["deepspeed", "universal", "export"]


@dataclass(frozen=True)
class Source:
    kind: Kind
    folder: Path  # the checkpoint folder or export directory
    meta: dict[str, Any]  # meta.json, or an export's config.json
    run_dir: Path | None = None  # set when the path given was a run directory
    universal_dir: Path | None = None  # DeepSpeed's universal tag folder, for kind "universal"

    @property
    def meta_file(self) -> Path:
        return self.folder / (EXPORT_CONFIG if self.kind == "export" else META)

    @property
    def step(self) -> int | None:
        return self.meta.get("step")

    @property
    def config(self) -> dict[str, Any]:
        try:
            return self.meta["config"]
        except KeyError:
            raise ValueError(f"{self.meta_file} has no 'config' (the resolved run config)") from None

    @property
    def topology(self) -> dict[str, Any] | None:
        return self.meta.get("topology")


def open_source(path: str | Path, *, check_safe: bool = True) -> Source:
    path = Path(path).expanduser().absolute()  # reports and config.json record where the weights came from
    if (path / "zero").is_dir() and glob.glob(str(path / "*model_states.pt")) and not (path / META).exists():
        return _bare_universal(path, check_safe)
    resolved = resolve_checkpoint(path)
    folder = resolved.folder
    run_dir = path if folder != path else None
    if resolved.kind == "export":
        return Source("export", folder, _read_json(folder / EXPORT_CONFIG), run_dir)
    meta = read_meta(folder)
    if check_safe:
        assert_weights_only_loadable(folder)
    if (meta.get("topology") or {}).get("layout") == UNIVERSAL:
        tag_dir = universal_tag_dir(folder)
        if tag_dir is None:
            raise FileNotFoundError(f"{folder}: meta.json says universal but {folder / UNIVERSAL} holds no tag folder")
        return Source("universal", folder, meta, run_dir, tag_dir)
    return Source("deepspeed", folder, meta, run_dir)


def _bare_universal(tag_dir: Path, check_safe: bool) -> Source:
    folder = tag_dir.parent.parent  # step_N/universal/step_N
    if not (folder / META).is_file():
        raise FileNotFoundError(
            f"{tag_dir} looks like a DeepSpeed universal checkpoint but {folder / META} (its run config, step "
            "and tokenizer) is missing; pass the checkpoint folder that holds it"
        )
    if check_safe:
        assert_weights_only_loadable(tag_dir)
    return Source("universal", folder, read_meta(folder), None, tag_dir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise ValueError(f"{path} must be a JSON object with at least 'config' (the resolved run config)")
    return data


def full_state(source: Source) -> dict[str, torch.Tensor]:
    """Complete fp32 weights (tied aliases may be absent for exports)."""
    if source.kind == "export":
        from safetensors.torch import load_file

        state = load_file(str(source.folder / EXPORT_WEIGHTS))
    elif source.kind == "universal":
        state = read_universal(source.universal_dir)
    else:
        state = full_state_dict(source.folder, source.topology)
    # ZeRO-0 files hold nn.Parameters; plain tensors keep autograd out of comparisons and exports
    return {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in state.items()}


def saved_module_state(source: Source) -> dict[str, torch.Tensor] | None:
    """The module weights DeepSpeed saved beside its optimizer state (mp_rank_XX_model_states.pt,
    tensor-parallel shards merged), read without any conversion; None where they are not complete
    (ZeRO-3 saves placeholders). In fp32 they equal the optimizer's master weights exactly, which
    makes them an independent reference for a universal conversion."""
    topo = source.topology or {}
    if source.kind != "deepspeed" or topo.get("zero_stage") == 3:
        return None
    shards = [safe_torch_load(source.folder / f"mp_rank_{r:02d}_model_states.pt")["module"] for r in range(topo["tp"])]
    return {k: v.detach().float() for k, v in merge_tp_shards(shards).items()}
