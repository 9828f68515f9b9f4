"""The offline SBP sweep (`armd eval sbp`, `tools/sbp_eval.py`): what S streams cost in quality
for what they gain in speed.

For each S the same number of unconditional samples of length N is drawn with the same seed, then
scored by one judge. Per S: forward calls (S + N/S - 1), wall time and tokens/s of decoding,
generative perplexity under the judge, unigram entropy. Written to OUT as
- results.json (schema `sbp` in eval/schema.py, samples included),
- results.md (a Markdown table),
- results.png (gen PPL and tokens/s against S).
Files are written whole or not at all (temporary name, then rename).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import atomic_path, write_atomic
from ..generate import sample_sbp
from ..rng import seeded
from .genppl import load_judge, unigram_entropy
from .text import codec_for

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def sweep(
    checkpoint: str,
    *,
    streams: Sequence[int],
    length: int,
    num_samples: int,
    judge: str | None = None,
    batch_size: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    sample_dtype: str = "float64",
    float64: bool = False,
    judge_dtype: str = "float32",
    judge_batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the sweep and return the `sbp` JSON document (see `write_results` to save it)."""
    from ..checkpoints.pretrained import load_pretrained

    bad = [s for s in streams if s < 1 or length % s]
    if bad:
        raise ValueError(f"--streams {bad}: every S must be >= 1 and divide --length {length}")
    if num_samples < 1:
        raise ValueError(f"--num-samples {num_samples} must be >= 1")
    for what, value in (("sample", sample_dtype), ("judge", judge_dtype)):
        if value not in DTYPES:
            raise ValueError(f"{what} dtype '{value}' is not one of {', '.join(DTYPES)}")
    pre = load_pretrained(checkpoint, device=device, dtype=torch.float64 if float64 else torch.float32)
    if length > pre.config.model.max_seq_len:
        raise ValueError(f"--length {length} exceeds the model's max_seq_len={pre.config.model.max_seq_len}")
    codec = codec_for(pre)
    scorer = load_judge(
        judge,
        generator_path=checkpoint,
        device=device,
        max_length=length,
        dtype=DTYPES[judge_dtype],
        batch_size=judge_batch_size,
    )
    batch = batch_size or num_samples
    # one small decode first, so that lazy initialisation is not billed to the first S
    sample_sbp(pre.model, length, streams[0], batch_size=1, seed=seed, sample_dtype=DTYPES[sample_dtype])
    rows = []
    bar = tqdm(total=len(streams) * num_samples, desc="sbp sweep", unit="sample", disable=not progress)
    for s in streams:
        gen = seeded(seed)  # a CPU generator on every device (armd_scale/rng.py)
        tokens, seconds, calls = [], 0.0, 0
        for start in range(0, num_samples, batch):
            b = min(batch, num_samples - start)
            out = sample_sbp(
                pre.model,
                length,
                s,
                batch_size=b,
                temperature=temperature,
                top_p=top_p,
                generator=gen,
                sample_dtype=DTYPES[sample_dtype],
            )
            tokens.append(out.tokens.cpu().numpy())
            seconds += out.seconds
            calls = out.forward_calls
            bar.update(b)
        samples = np.concatenate(tokens)
        score = scorer.score(samples, codec)
        rows.append(
            {
                "streams": s,
                "forward_calls": calls,
                "seconds": seconds,
                "tokens_per_s": samples.size / seconds if seconds > 0 else float("inf"),
                "gen_ppl": score.ppl,
                "gen_nll_per_token": score.nll_per_token,
                "judge_tokens": score.tokens,
                "judge_truncated": score.truncated,
                "entropy": unigram_entropy(samples),
                "samples": [{"tokens": row.tolist(), "text": codec.decode(row)} for row in samples],
            }
        )
    bar.close()
    return {
        "checkpoint": str(pre.source),
        "step": pre.step,
        "weights": pre.weights,
        "judge": scorer.describe(),
        "length": length,
        "num_samples": num_samples,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "sample_dtype": sample_dtype,
        "generator_dtype": "float64" if float64 else "float32",
        "results": rows,
    }


def markdown_table(doc: dict[str, Any]) -> str:
    judge = doc["judge"]
    lines = [
        f"SBP sweep of `{doc['checkpoint']}` (step {doc['step']}): N={doc['length']}, {doc['num_samples']} samples "
        f"per S, temperature {doc['temperature']}, top-p {doc['top_p']}, seed {doc['seed']}, sampling in "
        f"{doc['sample_dtype']}. Judge: {judge['kind']} `{judge.get('path', '')}` ({judge.get('tokenizer')} "
        f"tokens, {judge.get('dtype')}).",
        "",
        *results_table(doc["results"], "streams", "S"),
    ]
    return "\n".join(lines) + "\n"


def results_table(results: list[dict[str, Any]], setting_key: str, setting_label: str) -> list[str]:
    """Markdown rows of scored generation results, one per setting (S streams, or T steps for mdlm)."""
    lines = [
        f"| {setting_label} | forward calls | seconds | tokens/s | gen PPL | judge NLL/token | entropy (nats) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r[setting_key]} | {r['forward_calls']} | {r['seconds']:.3f} | {r['tokens_per_s']:.1f} | "
            f"{r['gen_ppl']:.3f} | {r['gen_nll_per_token']:.4f} | {r['entropy']:.3f} |"
        )
    return lines


def plot(doc: dict[str, Any], path: Path) -> None:
    """Two panels against S (log2 axis): generative perplexity and decoding tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [r["streams"] for r in doc["results"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(s, [r["gen_ppl"] for r in doc["results"]], "o-")
    left.set(xlabel="streams S", ylabel=f"gen PPL ({doc['judge']['kind']} judge)", title="quality")
    right.plot(s, [r["tokens_per_s"] for r in doc["results"]], "o-", color="tab:orange")
    right.set(xlabel="streams S", ylabel="tokens/s", title="speed")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(s, [str(v) for v in s])
        ax.grid(alpha=0.3)
    fig.suptitle(f"SBP sweep, N={doc['length']}, {doc['num_samples']} samples per S")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_results(doc: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """results.json, results.md and, where matplotlib is installed (the `plot` extra), results.png in out_dir
    (created if needed). The plot is optional: the numbers are all in the other two files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md"}
    write_atomic(paths["json"], json.dumps(doc, indent=1) + "\n")
    write_atomic(paths["md"], markdown_table(doc))
    if importlib.util.find_spec("matplotlib") is None:
        print(
            f"results.png not written to {out}: matplotlib is not installed (pip install 'armd_scale[plot]')",
            file=sys.stderr,
        )
        return paths
    paths["png"] = out / "results.png"
    plot(doc, paths["png"])
    return paths


def run_sbp_eval(checkpoint: str, out_dir: str | Path, **kw) -> dict[str, Any]:
    """The whole `armd eval sbp`: sweep, then write the three files. Returns the JSON document."""
    doc = sweep(checkpoint, **kw)
    write_results(doc, out_dir)
    return doc
