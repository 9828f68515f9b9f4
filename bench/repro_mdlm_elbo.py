"""Continuous-time negative ELBO of an mdlm checkpoint on held-out windows (the bound its loss trains).

`armd eval ppl --order diffusion --steps T` gives the T-step bound for any arch, but for mdlm it
costs one forward pass per non-empty step (about 0.63 T passes per window when T = N). The
continuous-time bound (MDLM, log-linear schedule)

    NELBO(x) = E_{s ~ U(eps, 1)} E_{z_s} [ (1/s) * sum_{j masked in z_s} -log p(x_j | z_s) ]

has an unbiased one-pass estimate per draw (`masked_diffusion.nelbo_estimate`), so K draws cost K
passes per window. It is an upper bound on -log p(x), and it is the T -> infinity limit of the
T-step bound; with log-linear masking it equals the average over uniformly random orders of the
order's NLL, i.e. the same quantity that `armd eval ppl --order random` estimates for an ARMD.

The windows are exactly those of `armd eval ppl` (same loader, same `--max-tokens` prefix, same
packing of text), and bits per byte uses the same byte table.

    python bench/repro_mdlm_elbo.py --checkpoint RUN_MDLM --data VAL_SHARDS --max-tokens 16384 \
        --draws 8 --seed 0 --json OUT.json

The JSON mirrors the `eval ppl` document, with kind `continuous`, likelihood `elbo` and `draws`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from armd_scale.eval.ppl import default_seq_len  # noqa: E402
from armd_scale.eval.text import bits_per_byte, codec_for  # noqa: E402
from armd_scale.eval.windows import open_eval_data  # noqa: E402
from armd_scale.model import masked_diffusion as md  # noqa: E402
from armd_scale.pretrained import load_pretrained  # noqa: E402


@torch.no_grad()
def continuous_nelbo(
    checkpoint: str, data: list[str], *, max_tokens: int | None, draws: int, seed: int, batch_size: int, doc_split: str
) -> dict:
    pre = load_pretrained(checkpoint, dtype=torch.float32)
    if pre.config.model.arch != "mdlm":
        raise SystemExit(f"error: {checkpoint} is arch '{pre.config.model.arch}'; this bound is for mdlm runs")
    model = pre.model.eval()
    codec = codec_for(pre)
    seq_len = default_seq_len(data, pre.config.data.seq_len)
    windows = open_eval_data(data, codec, seq_len=seq_len, max_tokens=max_tokens, doc_split=doc_split)
    table = codec.byte_lengths()
    gen = torch.Generator().manual_seed(seed)
    per_draw = np.zeros(draws)
    tokens = num_bytes = 0
    for rows in windows.batches(batch_size):
        x = torch.as_tensor(rows, dtype=torch.long)
        for k in range(draws):
            rates = md.stratified_rates(x.shape[0], 0, gen)  # antithetic over the batch, each rate uniform
            uniforms = torch.rand(x.shape, generator=gen, dtype=torch.float64)
            per_draw[k] += float(md.nelbo_estimate(model, x, rates, uniforms, model.mask_id).double().sum())
        tokens += x.numel()
        num_bytes += int(table[rows].sum()) if table is not None else 0
    per_token = per_draw / tokens
    mean = float(per_token.mean())
    return {
        "kind": "continuous",
        "likelihood": "elbo",
        "tokens": tokens,
        "windows": windows.num_windows,
        "seq_len": seq_len,
        "nll_per_token": mean,
        "ppl": math.exp(mean),
        "bits_per_byte": bits_per_byte(mean * tokens, num_bytes if table is not None else None),
        "bytes": num_bytes if table is not None else None,
        "draws": draws,
        "nll_std": float(per_token.std(ddof=1)) if draws > 1 else 0.0,
        "nll_per_draw": per_token.tolist(),
        "checkpoint": str(pre.source),
        "step": pre.step,
        "dtype": "float32",
        "seed": seed,
        "data": windows.sources,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="mdlm run dir, checkpoint folder or export dir")
    ap.add_argument("--data", required=True, nargs="+", help="shard sets or text, as for `armd eval ppl`")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--draws", type=int, default=8, help="noise draws per window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--doc-split", default="file", choices=("file", "paragraph", "line"))
    ap.add_argument("--json", required=True, type=Path)
    args = ap.parse_args(argv)
    doc = continuous_nelbo(
        args.checkpoint,
        args.data,
        max_tokens=args.max_tokens,
        draws=args.draws,
        seed=args.seed,
        batch_size=args.batch_size,
        doc_split=args.doc_split,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    bpb = doc["bits_per_byte"]
    print(
        f"continuous-time NELBO (bound): {doc['nll_per_token']:.4f} nats/token (std over {args.draws} draws "
        f"{doc['nll_std']:.4f}), bits/byte {bpb if bpb is None else round(bpb, 4)} over {doc['tokens']} tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
