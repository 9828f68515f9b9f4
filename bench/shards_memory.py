"""Peak memory of `armd shards` on a large `.jsonl.zst` (docs/DATA.md, "Memory").

    python bench/shards_memory.py --size-mb 2048 --workers 2 [--workdir /tmp/armd-shards-bench]
    python bench/shards_memory.py --size-mb 200 --pythonpath /path/to/other/checkout   # compare a tree

Writes WORKDIR/corpus-<size>.jsonl.zst once: documents (paragraphs of ../shared/corpora/gutenberg_nltk,
each copy prefixed with its copy number so no two documents are equal) as JSON lines until the
*uncompressed* JSON reaches --size-mb, zstd level 3. Trains an 8,000-piece SentencePiece BPE on the
same books once. Then runs `armd shards --seq-len 1024 --val-fraction 0.001` (default 64 MB shards)
as a subprocess and samples, every 0.1 s, the RSS of that process and of all its children (worker
processes) with psutil. Prints one Markdown table row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT.parent / "shared" / "corpora" / "gutenberg_nltk"


def make_corpus(path: Path, size_mb: int) -> None:
    import zstandard

    sys.path.insert(0, str(ROOT))
    from armd_scale.data.prepare.textio import expand_inputs, iter_corpus

    docs = list(iter_corpus(expand_inputs([str(BOOKS)]), doc_split="paragraph", warn=False))
    target = size_mb << 20
    written = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
        copy = 0
        while written < target:
            for doc in docs:
                line = (json.dumps({"text": f"[{copy}] {doc}", "id": written}) + "\n").encode()
                out.write(line)
                written += len(line)
                if written >= target:
                    break
            copy += 1
    os.replace(tmp, path)


def peak_rss(proc: subprocess.Popen) -> tuple[float, float]:
    """(peak RSS of the whole process tree, peak RSS of the main process), MiB, sampled every 0.1 s."""
    peaks = [0.0, 0.0]
    main = psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            try:
                own = main.memory_info().rss
                tree = own + sum(c.memory_info().rss for c in main.children(recursive=True))
            except psutil.Error:
                continue
            peaks[0] = max(peaks[0], tree / 2**20)
            peaks[1] = max(peaks[1], own / 2**20)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc.wait()
    thread.join()
    return peaks[0], peaks[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="uncompressed JSON-lines size")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/armd-shards-bench")
    parser.add_argument("--pythonpath", default=str(ROOT), help="the checkout whose armd_scale runs")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus-{args.size_mb}mb.jsonl.zst"
    if not corpus.exists():
        make_corpus(corpus, args.size_mb)
    env = {**os.environ, "PYTHONPATH": args.pythonpath, "OMP_NUM_THREADS": "1"}
    tok = work / "sp8k"
    if not (tok / "tokenizer.json").exists():
        cmd = [sys.executable, "-m", "armd_scale.cli", "tokenizer", "--input", str(BOOKS), "--vocab-size", "8000"]
        subprocess.run([*cmd, "--out", str(tok), "--no-progress"], env=env, cwd=work, check=True, capture_output=True)
    out = work / "shards"
    cmd = [sys.executable, "-m", "armd_scale.cli", "shards", "--tokenizer", str(tok), "--input", str(corpus)]
    cmd += ["--seq-len", "1024", "--val-fraction", "0.001", "--workers", str(args.workers), "--out", str(out)]
    cmd += ["--overwrite", "--no-progress"]
    start = time.perf_counter()
    # cwd=work: run from the repository root, `python -m` would import that tree whatever PYTHONPATH says
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree, own = peak_rss(proc)
    wall = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"armd shards failed:\n{stderr}")
    tokens = sum(json.loads((out / s / "manifest.json").read_text())["totals"]["tokens"] for s in ("train", "val"))
    print(
        f"| {args.size_mb:,} MB JSON ({corpus.stat().st_size / 2**20:,.0f} MB .zst) | {args.workers} | "
        f"{tokens:,} | {wall:,.0f} s | {own:,.0f} MiB | {tree:,.0f} MiB |"
    )


if __name__ == "__main__":
    main()
