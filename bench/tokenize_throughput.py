"""Tokenization throughput of every tokenizer backend on the same corpus (docs/BENCHMARKS.md).

    python bench/tokenize_throughput.py [--corpus ../shared/corpora/gutenberg_nltk] [--vocab-size 8000]

For each backend (SentencePiece BPE, byte-level BPE, WordPiece; all trained here on the corpus with
`--vocab-size` ids) it reports
- encode: tokens/s of the tokenizer alone, one process, over the corpus's paragraphs held in memory;
- shards, 1 and 2 workers: tokens/s of a whole `build_shards` call (`--doc-split paragraph`,
  `--seq-len 1024`, 0.1% held out): both streaming passes over the files, encoding and writing.
Each number is the best of --repeats runs (default 3), which damps other jobs on a shared machine.
Prints a Markdown table and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from armd_scale.data.prepare.shards import build_shards  # noqa: E402
from armd_scale.data.prepare.textio import expand_inputs, iter_corpus  # noqa: E402
from armd_scale.data.prepare.tokenizer_training import train_tokenizer  # noqa: E402

KINDS = ("sentencepiece", "byte-bpe", "wordpiece")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora" / "gutenberg_nltk"))
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sources = expand_inputs([args.corpus])
    docs = list(iter_corpus(sources, doc_split="paragraph", warn=False))
    size = sum(len(d.encode()) for d in docs)
    print(f"corpus {args.corpus}: {len(docs):,} paragraphs, {size / 1e6:.1f} MB; load {os.getloadavg()}")
    print("| backend | tokens | encode, 1 process | shards, 1 worker | shards, 2 workers |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            tok = train_tokenizer(sources, f"{tmp}/{kind}", vocab_size=args.vocab_size, kind=kind)
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                tokens = sum(len(tok.encode_chunk(d)) for d in docs)
                best = min(best, time.perf_counter() - start)
            encode = tokens / best
            rates = []
            for workers in (1, 2):
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    manifests = build_shards(
                        [args.corpus],
                        f"{tmp}/{kind}-shards-{workers}",
                        tok,
                        seq_len=1024,
                        val_fraction=0.001,
                        workers=workers,
                        doc_split="paragraph",
                        overwrite=True,
                    )
                    best = min(best, time.perf_counter() - start)
                written = sum(m.totals["tokens"] + m.totals["dropped_tail_tokens"] for m in manifests.values())
                rates.append(written / best)
            print(f"| {kind} | {tokens:,} | {encode:,.0f} tok/s | {rates[0]:,.0f} tok/s | {rates[1]:,.0f} tok/s |")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
