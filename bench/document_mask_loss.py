"""The loss effect of document masking: exact l2r NLL of trained checkpoints on a validation shard
set, scored two ways: whole windows (every token conditions on everything before it in the window,
as validation during training does) and per document (data.document_mask's rule: each document
of the window alone). A model trained with document masking is only ever asked the second question
in training; one trained without it, the first.

    python bench/document_mask_loss.py --val SHARDS/val CKPT_OFF CKPT_ON
"""

from __future__ import annotations

import argparse

import torch

from armd_scale.checkpoints.pretrained import load_pretrained
from armd_scale.data.manifest import read_manifest
from armd_scale.data.shardio import load_shard
from armd_scale.model import token_nll
from armd_scale.model.masks import document_ids


def val_windows(url: str) -> tuple[torch.Tensor, int]:
    manifest = read_manifest(url)
    rows = [
        load_shard(manifest.shard_url(i), e, seq_len=manifest.seq_len, dtype=manifest.dtype)
        for i, e in enumerate(manifest.shards)
    ]
    tokens = torch.cat([torch.from_numpy(r.astype("int64")) for r in rows])
    return tokens, int(manifest.build["eos_id"])


def nll(model, tokens: torch.Tensor, eos_id: int, per_document: bool, batch: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(tokens), batch):
            x = tokens[i : i + batch]
            order = torch.arange(x.shape[1]).expand_as(x)
            doc = document_ids(x, eos_id) if per_document else None
            total += float(token_nll(model(x, order, order, doc), x, order).sum())
            count += x.numel()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    tokens, eos_id = val_windows(args.val)
    boundaries = int((tokens[:, :-1] == eos_id).sum())
    print(f"{len(tokens)} windows x {tokens.shape[1]} tokens, {boundaries} document boundaries inside windows")
    print("| checkpoint | trained with document_mask | l2r NLL, whole windows | l2r NLL, per document |")
    print("|---|---|---|---|")
    for path in args.checkpoints:
        pre = load_pretrained(path, weights="raw")
        on = pre.config.data.document_mask
        windows = nll(pre.model, tokens, eos_id, False, args.batch)
        documents = nll(pre.model, tokens, eos_id, True, args.batch)
        print(f"| {path} | {on} | {windows:.4f} | {documents:.4f} |")


if __name__ == "__main__":
    main()
