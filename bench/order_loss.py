"""Does the chunked sample order train as well as a full shuffle? Short tiny-cpu runs on real text.

Builds a 512-piece tokenizer and seq_len-128 shards (1 MB shards, paragraphs as documents, 2% held
out) from `../shared/corpora/gutenberg_nltk`, then trains the `tiny-cpu` preset with the same
model seed under each order and prints the validation loss at every evaluation, on the whole
held-out split (so every order is scored on the same samples, up to a dropped tail of fewer than
8 of them):

- chunked (default): 128 KiB chunks, windows of 4 chunks;
- full shuffle: the same shards with chunks of one sample (`--upgrade-manifest --chunk-kb 1`)
  and windows of one chunk, so every batch is a uniform draw from the whole set;
- shard by shard: the loader before chunked reads, when `--before-tree` names such a checkout.

    python bench/order_loss.py --out /tmp/order-loss [--steps 800] [--seeds 1234,99] [--before-tree DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent.parent / "shared" / "corpora" / "gutenberg_nltk"


def armd(tree: Path, *args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-m", "armd_scale.cli", *args], env=env, cwd=cwd, check=True)


def prepare(out: Path, tree: Path, corpus: Path) -> Path:
    data = out / "data"
    if (data / "train" / "manifest.json").exists():
        return data
    armd(tree, "tokenizer", "--input", str(corpus), "--vocab-size", "512", "--out", str(out / "tok"), cwd=out)
    armd(
        tree, "shards", "--tokenizer", str(out / "tok"), "--input", str(corpus), "--seq-len", "128",
        "--doc-split", "paragraph", "--val-fraction", "0.02", "--shard-size-mb", "1", "--out", str(data),
        "--no-progress", cwd=out,
    )  # fmt: skip
    full = out / "data-full-shuffle"
    shutil.copytree(data, full)
    armd(tree, "shards", "--upgrade-manifest", str(full), "--chunk-kb", "1", "--no-progress", cwd=out)
    return data


def format_1_copy(data: Path, dst: Path) -> Path:
    """The train and val splits under format-1 manifests (shards symlinked), for the old loader."""
    for split in ("train", "val"):
        (dst / split).mkdir(parents=True, exist_ok=True)
        raw = json.loads((data / split / "manifest.json").read_text())
        raw["format"] = "armd_scale.shards/1"
        raw.pop("chunk_samples", None)
        for shard in raw["shards"]:
            shard.pop("chunk_sha256", None)
            link = dst / split / shard["name"]
            if not link.exists():
                link.symlink_to(data / split / shard["name"])
        (dst / split / "manifest.json").write_text(json.dumps(raw))
    return dst


def train(tree: Path, run: Path, data: Path, tok: Path, steps: int, seed: int, extra: list[str]) -> dict[int, float]:
    if not (run / "metrics.jsonl").exists() or "finished" not in (run / "exit_status.json").read_text():
        shutil.rmtree(run, ignore_errors=True)
        run.parent.mkdir(parents=True, exist_ok=True)
        armd(
            tree, "train", f"run.dir={run}", f"data.train={data}/train", f"data.val={data}/val",
            f"data.tokenizer={tok}", f"data.seed={seed}", f"train.steps={steps}", "train.eval_every=100",
            "train.eval_batches=100000", f"train.checkpoint_every={steps}", "train.sample_at_end=0", "log.wandb=off",
            "log.progress_bar=false", *extra, cwd=run.parent,
        )  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val/nll"] for r in records if "val/nll" in r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seeds", default="1234,99", help="data seeds (the model seed stays fixed)")
    ap.add_argument("--before-tree", help="a checkout of the loader before chunked reads")
    ap.add_argument("--corpus", default=str(CORPUS))
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        sys.exit(f"{corpus} is not there; this bench needs the shared corpora (or --corpus)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tree = HERE.parent
    data = prepare(out, tree, corpus)
    variants = {
        "chunked (default)": (tree, data, []),
        "full shuffle": (tree, out / "data-full-shuffle", ["data.shuffle_chunks=1"]),
    }
    if args.before_tree:
        variants["shard by shard (before)"] = (Path(args.before_tree), format_1_copy(data, out / "data-v1"), [])
    curves = {}
    for name, (code, where, extra) in variants.items():
        for seed in [int(s) for s in args.seeds.split(",")]:
            slug = name.split(" ")[0].replace("(", "")
            curves[(name, seed)] = train(
                code, out / "runs" / f"{slug}-{seed}", where, out / "tok", args.steps, seed, extra
            )
            print(name, seed, curves[(name, seed)], flush=True)
    steps = sorted(next(iter(curves.values())))
    print("\n| order | data seed | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in steps) + " |")
    for (name, seed), curve in curves.items():
        print(f"| {name} | {seed} | " + " | ".join(f"{curve[s]:.3f}" for s in steps) + " |")


if __name__ == "__main__":
    main()
