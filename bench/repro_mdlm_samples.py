"""Generative perplexity of MDLM samples, scored like `armd eval sbp` scores ARMD samples.

`armd eval sbp` decodes armd/ar checkpoints only; an mdlm run samples with its own ancestral sampler
(`MDLMModel.sample`, T reverse steps, at most T forward calls). This script draws K unconditional
samples of length N for each T, times the decoding, and scores them with the same judge code
(`armd_scale.eval.genppl`: the judge's exact l2r likelihood in float64, and unigram entropy), so
its rows sit beside an SBP sweep's rows. Give T equal to the SBP forward-call counts
(S + N/S - 1) to compare at an equal number of network calls.

    python bench/repro_mdlm_samples.py --checkpoint RUN_MDLM --judge RUN_AR --length 128 \
        --steps 128,65,35 --num-samples 32 --seed 0 --out DIR

Writes DIR/results.json (same row fields as the `sbp` schema, with `steps` in place of `streams`)
and DIR/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from armd_scale.eval.genppl import load_judge, unigram_entropy  # noqa: E402
from armd_scale.eval.sbp import results_table  # noqa: E402
from armd_scale.eval.text import codec_for  # noqa: E402
from armd_scale.generate import sample_mdlm  # noqa: E402
from armd_scale.pretrained import load_pretrained  # noqa: E402


def sweep(
    checkpoint: str,
    judge: str,
    *,
    length: int,
    steps: list[int],
    num_samples: int,
    batch_size: int,
    seed: int,
    temperature: float,
    top_p: float,
) -> dict:
    """Sample and score for every T; returns the results document."""
    pre = load_pretrained(checkpoint, dtype=torch.float32)
    if pre.config.model.arch != "mdlm":
        raise SystemExit(f"error: {checkpoint} is arch '{pre.config.model.arch}', this script samples mdlm runs")
    model = pre.model.eval()
    codec = codec_for(pre)
    scorer = load_judge(judge, generator_path=checkpoint)
    sample_mdlm(model, 1, length, 2, generator=torch.Generator().manual_seed(seed))  # untimed warm-up
    rows = []
    for t in steps:
        gen = torch.Generator().manual_seed(seed)
        chunks, seconds, calls = [], 0.0, []
        for start in range(0, num_samples, batch_size):
            b = min(batch_size, num_samples - start)
            begin = time.perf_counter()
            out = sample_mdlm(model, b, length, t, generator=gen, temperature=temperature, top_p=top_p)
            seconds += time.perf_counter() - begin
            chunks.append(out.tokens.cpu().numpy())
            calls.append(out.forward_calls)
        samples = np.concatenate(chunks)
        score = scorer.score(samples, codec)
        rows.append(
            {
                "steps": t,
                "forward_calls": max(calls),
                "seconds": seconds,
                "tokens_per_s": samples.size / seconds,
                "gen_ppl": score.ppl,
                "gen_nll_per_token": score.nll_per_token,
                "judge_tokens": score.tokens,
                "judge_truncated": score.truncated,
                "entropy": unigram_entropy(samples),
                "samples": [{"tokens": row.tolist(), "text": codec.decode(row)} for row in samples],
            }
        )
        print(
            f"mdlm T={t}: {max(calls)} forward calls, {samples.size / seconds:.1f} tokens/s, "
            f"gen PPL {score.ppl:.2f}, entropy {rows[-1]['entropy']:.3f}",
            flush=True,
        )
    return {
        "checkpoint": str(pre.source),
        "step": pre.step,
        "judge": scorer.describe(),
        "length": length,
        "num_samples": num_samples,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "sample_dtype": "float64",
        "generator_dtype": "float32",
        "threads": torch.get_num_threads(),
        "results": rows,
    }


def markdown(doc: dict) -> str:
    lines = [
        f"MDLM ancestral sampling of `{doc['checkpoint']}` (step {doc['step']}): N={doc['length']}, "
        f"{doc['num_samples']} samples per T, temperature {doc['temperature']}, top-p {doc['top_p']}, "
        f"seed {doc['seed']}. Judge: `{doc['judge'].get('path', '')}`.",
        "",
        *results_table(doc["results"], "steps", "T"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="mdlm run dir, checkpoint folder or export dir")
    ap.add_argument("--judge", required=True, help="armd/ar checkpoint (or transformers dir) that scores samples")
    ap.add_argument("--length", type=int, required=True)
    ap.add_argument("--steps", required=True, help="comma-separated T values, e.g. 128,65,35")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None, help="samples per sampler call (default: all)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    doc = sweep(
        args.checkpoint,
        args.judge,
        length=args.length,
        steps=[int(s) for s in args.steps.split(",")],
        num_samples=args.num_samples,
        batch_size=args.batch_size or args.num_samples,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
