"""What MDLM's BOS/EOS block wrapper adds to the zero-shot NLL of a model trained without it.

The same text is cut into `sedd` blocks (L plain tokens) and `mdlm` blocks ([BOS] + L-2 tokens + [EOS])
by the command's own code (eval/zeroshot_blocks.py), and every position's exact left-to-right NLL is
read off one forward pass (eval/likelihood.py). The decomposition of docs/EVALUATION.md ("what the
wrapper adds") is then measured instead of argued:

- h_E: the NLL of the forced EOS at position L-1 of an mdlm block (the text goes on there);
- h_c: the NLL per content token of mdlm blocks (positions 1..L-2, BOS as their first context);
- the first content token under each protocol: with BOS as context (mdlm) and with none (sedd);
- the reported log-perplexities, and the part of the mdlm one that the forced EOS alone explains,
  (mean h_E - mean h_c) / (L-1).

    python bench/zeroshot_wrapper.py --checkpoint RUN --task lm1b --data FILE [FILE ...] [--block-len L]

Exact models (armd, ar) only: the bound of an mdlm checkpoint has no per-position terms.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from armd_scale.checkpoints.pretrained import load_pretrained
from armd_scale.eval.likelihood import position_nll
from armd_scale.eval.text import codec_for
from armd_scale.eval.zeroshot_blocks import wrap_blocks
from armd_scale.eval.zeroshot_data import benchmark, read_rows
from armd_scale.model.generation_orders import l2r_order


@torch.no_grad()
def nll_per_position(model, blocks, batch_size: int) -> torch.Tensor:
    order, block = l2r_order(1, blocks.shape[1])
    out = []
    for start in range(0, len(blocks), batch_size):
        x = torch.as_tensor(blocks[start : start + batch_size], dtype=torch.long)
        out.append(position_nll(model, x, order[0], block[0], torch.float32).double())
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--block-len", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(1)
    pre = load_pretrained(args.checkpoint)
    if pre.model.likelihood_kind != "exact":
        raise SystemExit(f"{args.checkpoint}: arch {pre.config.model.arch} has no exact per-position NLL")
    codec = codec_for(pre)
    bench = benchmark(args.task)
    rows = [row for path in args.data for row in read_rows(path, bench)]
    length = args.block_len or pre.config.data.seq_len
    sedd = nll_per_position(pre.model, wrap_blocks(rows, bench, codec, length, "sedd").tokens, args.batch_size)
    mdlm = nll_per_position(pre.model, wrap_blocks(rows, bench, codec, length, "mdlm").tokens, args.batch_size)
    h_c = float(mdlm[:, 1:-1].mean())
    h_e = float(mdlm[:, -1].mean())
    result = {
        "checkpoint": str(pre.source),
        "arch": pre.config.model.arch,
        "task": bench.name,
        "block_len": length,
        "blocks": {"sedd": len(sedd), "mdlm": len(mdlm)},
        "log_ppl": {"sedd": float(sedd.mean()), "mdlm": float(mdlm[:, 1:].mean())},
        "h_c_content_per_token": h_c,
        "h_E_forced_eos": h_e,
        "first_token": {"mdlm_with_bos": float(mdlm[:, 1].mean()), "sedd_no_context": float(sedd[:, 0].mean())},
        "eos_share_of_mdlm_log_ppl": (h_e - h_c) / (length - 1),
    }
    result["ppl_ratio_mdlm_over_sedd"] = math.exp(result["log_ppl"]["mdlm"] - result["log_ppl"]["sedd"])
    result["ppl_ratio_from_eos_alone"] = math.exp(result["eos_share_of_mdlm_log_ppl"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
