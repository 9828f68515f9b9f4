"""`armd tokenizer`: train a tokenizer (SentencePiece, byte-level BPE or WordPiece); its SHA-256 is its identity."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from armd_scale.data.prepare.formats import INPUT_FORMATS
from armd_scale.data.prepare.readers import DOC_SPLITS

from .common import positive_int, probability

# SentencePiece-only options and their defaults (None on the command line means "not given").
SP_DEFAULTS = {
    "model_type": "bpe",
    "character_coverage": 0.9995,
    "byte_fallback": False,
    "max_sentences": 5_000_000,
    "threads": 4,
    "seed": 0,
}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, folders, globs (.txt, .jsonl, .json.gz, .parquet; .gz/.zst/...), hf:<dataset> or builtin:pydoc",
    )
    parser.add_argument("--vocab-size", type=positive_int, required=True, help="number of ids, special tokens included")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out (the new tokenizer is written beside it, then renamed into place)",
    )
    parser.add_argument(
        "--kind",
        choices=["sentencepiece", "byte-bpe", "wordpiece"],
        default="sentencepiece",
        help="sentencepiece (default; tokenizer.model), byte-bpe (GPT-2-style tokenizer.json) or "
        "wordpiece (BERT-style tokenizer.json)",
    )
    parser.add_argument(
        "--cased",
        action="store_true",
        help="wordpiece: keep case and accents (default: lower-case, like bert-base-uncased)",
    )
    sp = parser.add_argument_group("sentencepiece only")
    sp.add_argument("--model-type", choices=["bpe", "unigram"], default=None, help="default bpe")
    sp.add_argument(
        "--character-coverage",
        type=probability,
        default=None,
        help="share of characters covered by the vocabulary; the rest become unk (default 0.9995)",
    )
    sp.add_argument(
        "--byte-fallback",
        action="store_true",
        default=None,
        help="encode uncovered characters as UTF-8 bytes instead of unk (uses 256 ids)",
    )
    sp.add_argument(
        "--max-sentences", type=positive_int, default=None, help="sample at most this many lines (default 5M)"
    )
    sp.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="threads; the result depends on it, so it is fixed (default 4)",
    )
    sp.add_argument("--seed", type=int, default=None, help="default 0")
    parser.add_argument("--text-field", default="text", help="field / column holding the text (JSON, Parquet, hf:)")
    parser.add_argument(
        "--doc-split", choices=DOC_SPLITS, default="file", help="what a document is in .txt inputs (default file)"
    )
    parser.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default="auto",
        help="format of input files (default auto: from the name; an unknown name is an error)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run, _parser=parser)


def run(args: argparse.Namespace) -> int:
    from fsspec.implementations.local import LocalFileSystem

    from armd_scale.checkpoints.atomic import atomic_dir, not_empty
    from armd_scale.data.errors import DataError
    from armd_scale.data.prepare.tokenizer_training import train_tokenizer
    from armd_scale.data.tokenizers.base import Tokenizer
    from armd_scale.data.urls import url_to_fs

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {k: getattr(args, k) for k in SP_DEFAULTS if getattr(args, k) is not None}
    if args.kind == "sentencepiece":
        options = {**SP_DEFAULTS, **given}
        options["num_threads"] = options.pop("threads")
    else:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            args._parser.error(f"{flags} apply to --kind sentencepiece only")
        options = {"lowercase": not args.cased} if args.kind == "wordpiece" else {}
    if args.cased and args.kind != "wordpiece":
        args._parser.error("--cased applies to --kind wordpiece only")
    start = time.perf_counter()

    def train(out: str) -> Tokenizer:
        return train_tokenizer(
            args.input,
            out,
            vocab_size=args.vocab_size,
            kind=args.kind,
            text_field=args.text_field,
            doc_split=args.doc_split,
            input_format=args.input_format,
            progress=not args.no_progress,
            **options,
        )

    # Runs and shard sets depend on a tokenizer by its SHA-256: replacing one takes --overwrite, and the new
    # one is trained into a staging folder beside --out, then renamed into place, so a failure midway
    # leaves the old tokenizer whole.
    fs, path = url_to_fs(args.out)
    try:
        if isinstance(fs, LocalFileSystem):
            with atomic_dir(path, overwrite=args.overwrite) as staging:
                tok = train(str(staging))
            tok.source = path
        else:  # an object store has no rename: the refusal only, then the files are written in place
            if not args.overwrite and fs.isdir(path) and fs.ls(path):
                raise not_empty(args.out)
            tok = train(args.out)
    except (DataError, FileExistsError) as e:
        print(f"armd tokenizer: error: {e}", file=sys.stderr)
        return 1
    info = tok.info["trained_on"]
    print(
        f"tokenizer {args.out}: {args.kind}, vocab {tok.vocab_size}, sha256 {tok.sha256} "
        f"({info['documents']} documents, {time.perf_counter() - start:.1f}s)"
    )
    return 0
