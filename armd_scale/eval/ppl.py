"""`armd eval ppl` as a function: checkpoint + data -> the JSON document of eval/schema.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.errors import DataError
from ..data.manifest import read_manifest
from ..data.prepare.textio import DocSplit
from .likelihood import evaluate_likelihood
from .text import codec_for
from .windows import is_shard_set, open_eval_data


def default_seq_len(paths: Sequence[str], model_seq_len: int) -> int:
    """The first shard set's window length if there is one (shards are already packed), else the run's."""
    for path in paths:
        if is_shard_set(path):
            return read_manifest(path).seq_len
    return model_seq_len


def eval_ppl(
    checkpoint: str,
    data: Sequence[str],
    *,
    kind: str = "l2r",
    orders: int = 1,
    steps: int | None = None,
    schedule: str = "loglinear",
    max_tokens: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    float64: bool = False,
    seq_len: int | None = None,
    device: str | torch.device = "cpu",
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Score `data` with the checkpoint at `checkpoint` (run dir, checkpoint folder or export dir)."""
    from ..checkpoints.pretrained import load_pretrained

    dtype = torch.float64 if float64 else torch.float32
    if kind == "diffusion" and steps is None:
        raise ValueError("--order diffusion needs --steps T")
    if kind == "l2r" and orders != 1:
        raise ValueError(f"--order l2r has exactly one order; drop --orders {orders}")
    pre = load_pretrained(checkpoint, device=device, dtype=dtype)
    codec = codec_for(pre)
    seq_len = seq_len or default_seq_len(data, pre.config.data.seq_len)
    if seq_len > pre.config.model.max_seq_len:
        raise DataError(f"windows of seq_len={seq_len} exceed the model's max_seq_len={pre.config.model.max_seq_len}")
    windows = open_eval_data(
        data,
        codec,
        seq_len=seq_len,
        max_tokens=max_tokens,
        text_field=text_field,
        doc_split=doc_split,
        input_format=input_format,
    )
    result = evaluate_likelihood(
        pre.model,
        windows.batches(batch_size),
        kind=kind,
        seq_len=seq_len,
        orders=orders,
        steps=steps,
        schedule=schedule,
        seed=seed,
        dtype=dtype,
        byte_table=codec.byte_lengths(),
        total_windows=windows.num_windows,
        progress=progress,
    )
    out = result.to_json()
    out.update(
        checkpoint=str(pre.source),
        step=pre.step,
        weights=pre.weights,
        dtype=str(dtype).removeprefix("torch."),
        seed=seed,
        data=windows.sources,
    )
    return out
