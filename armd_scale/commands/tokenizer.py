"""`armd tokenizer`: train the SentencePiece tokenizer whose SHA-256 identifies it everywhere."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from armd_scale.data.textio import DOC_SPLITS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, folders, globs (.txt, .jsonl, optionally .gz) or builtin:pydoc",
    )
    parser.add_argument("--vocab-size", type=int, required=True, help="number of pieces, specials included")
    parser.add_argument("--out", required=True, help="output directory (tokenizer.model, .vocab, .json)")
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    parser.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        help="share of characters covered by the vocabulary; the rest become unk (default 0.9995)",
    )
    parser.add_argument(
        "--byte-fallback",
        action="store_true",
        help="encode uncovered characters as UTF-8 bytes instead of unk (uses 256 ids)",
    )
    parser.add_argument("--text-field", default="text", help="JSON field holding the text in .jsonl inputs")
    parser.add_argument(
        "--doc-split",
        choices=DOC_SPLITS,
        default="file",
        help="what a document is in .txt inputs (recorded; training reads lines anyway)",
    )
    parser.add_argument(
        "--max-sentences", type=int, default=5_000_000, help="sample at most this many lines for training"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="SentencePiece threads; the result depends on it, so it is fixed, not per machine",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from armd_scale.data.errors import DataError
    from armd_scale.data.tokenizer import train_tokenizer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        tok = train_tokenizer(
            args.input,
            args.out,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            byte_fallback=args.byte_fallback,
            text_field=args.text_field,
            doc_split=args.doc_split,
            max_sentences=args.max_sentences,
            num_threads=args.threads,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except DataError as e:
        print(f"armd tokenizer: error: {e}", file=sys.stderr)
        return 1
    info = tok.info["trained_on"]
    print(
        f"tokenizer {args.out}: {args.model_type}, vocab {tok.vocab_size}, sha256 {tok.sha256} "
        f"({info['documents']} documents, {info['sentences']} lines, {time.perf_counter() - start:.1f}s)"
    )
    return 0
