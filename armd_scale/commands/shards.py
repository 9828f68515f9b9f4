"""`armd shards`: tokenize text into WebDataset shards with a manifest, `--verify` a shard set, or
`--upgrade-manifest` an older one (chunk checksums for the loader's ranged reads)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from armd_scale.data.prepare.formats import INPUT_FORMATS
from armd_scale.data.prepare.readers import DOC_SPLITS

from .common import positive_float, positive_int


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verify", metavar="URL", help="check every shard of URL (or URL/train and URL/val) against its manifest"
    )
    parser.add_argument(
        "--upgrade-manifest",
        metavar="URL",
        help="add chunk checksums to the manifest of URL (or URL/train and URL/val) built by an older armd_scale, "
        "or re-chunk it with --chunk-kb; reads every shard once, changes no shard and keeps the fingerprint",
    )
    parser.add_argument(
        "--tokenizer",
        help="tokenizer directory from `armd tokenizer`, a tokenizer.json (or a folder holding one), or a hub "
        "name such as gpt2 found in the local Hugging Face cache",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="files, folders, globs (.txt, .jsonl, .json.gz, .parquet; .gz/.zst/...), hf:<dataset>, builtin:pydoc, "
        "or one synthetic:markov?vocab=..&order=.. source (needs no tokenizer)",
    )
    parser.add_argument("--seq-len", type=positive_int, help="tokens per packed sample")
    parser.add_argument("--out", help="output URL (local path, file://, s3://, memory://)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.0, help="fraction of whole documents held out into OUT/val (default 0)"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="tokenizer processes; output is identical for any value"
    )
    parser.add_argument("--seed", type=int, default=0, help="picks the held-out documents")
    parser.add_argument("--samples-per-shard", type=positive_int, help="default: as many as fit --shard-size-mb")
    parser.add_argument("--shard-size-mb", type=positive_float, default=64.0)
    parser.add_argument(
        "--chunk-kb",
        type=positive_float,
        help="size of a chunk, the unit the loader reads and checksums (default 128 KiB; see docs/DATA.md)",
    )
    parser.add_argument("--text-field", default="text", help="field / column holding the text (JSON, Parquet, hf:)")
    parser.add_argument(
        "--doc-split",
        choices=DOC_SPLITS,
        default="file",
        help="what a document is in .txt inputs: the whole file, a paragraph or a line",
    )
    parser.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default="auto",
        help="format of input files (default auto: from the name; an unknown name is an error)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing shard set at --out")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run, _parser=parser)


def run(args: argparse.Namespace) -> int:
    from armd_scale.data.errors import DataError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.verify:
            return _verify(args)
        if args.upgrade_manifest:
            return _upgrade(args)
        return _build(args)
    except DataError as e:
        print(f"armd shards: error: {e}", file=sys.stderr)
        return 1


def _verify(args: argparse.Namespace) -> int:
    from armd_scale.data.prepare.verify import verify_shards

    status = 0
    for report in verify_shards(args.verify, progress=not args.no_progress):
        for url, reason in report.bad:
            print(f"BAD {url}: {reason}")
        verdict = "OK" if report.ok else f"FAILED ({len(report.bad)} bad)"
        print(f"{report.url}: {report.shards} shards, {report.samples} samples verified: {verdict}")
        status |= 0 if report.ok else 1
    return status


def _upgrade(args: argparse.Namespace) -> int:
    from armd_scale.data.prepare.manifest_upgrade import upgrade_manifests

    for m in upgrade_manifests(args.upgrade_manifest, chunk_kb=args.chunk_kb, progress=not args.no_progress):
        chunks = sum(len(s.chunks) for s in m.shards)
        print(f"{m.url}: {len(m.shards)} shards, {chunks} chunks of {m.chunk_samples} samples: manifest upgraded")
    return 0


def _build(args: argparse.Namespace) -> int:
    from armd_scale.data.prepare.shards import build_shards
    from armd_scale.data.prepare.synthetic import build_synthetic_shards

    parser: argparse.ArgumentParser = args._parser
    synthetic = bool(args.input) and args.input[0].startswith("synthetic:")
    missing = [
        flag
        for flag, value in (
            ("--input", args.input),
            ("--seq-len", args.seq_len),
            ("--out", args.out),
            ("--tokenizer", args.tokenizer or synthetic),
        )
        if not value
    ]
    if missing:
        parser.error(f"building shards needs {', '.join(missing)} (or use --verify URL)")
    start = time.perf_counter()
    size = dict(samples_per_shard=args.samples_per_shard, shard_size_mb=args.shard_size_mb)
    if args.chunk_kb is not None:
        size["chunk_kb"] = args.chunk_kb
    if synthetic:
        if len(args.input) != 1:
            parser.error("a synthetic source is sharded on its own: pass exactly one --input")
        if args.val_fraction or args.tokenizer:
            parser.error(
                "a synthetic source sets its split sizes in the URL (samples=, val_samples=) and needs "
                "no tokenizer: drop --val-fraction/--tokenizer"
            )
        manifests = build_synthetic_shards(
            args.input[0], args.out, seq_len=args.seq_len, seed=args.seed, overwrite=args.overwrite, **size
        )
    else:
        manifests = build_shards(
            args.input,
            args.out,
            args.tokenizer,
            seq_len=args.seq_len,
            val_fraction=args.val_fraction,
            seed=args.seed,
            workers=args.workers,
            text_field=args.text_field,
            doc_split=args.doc_split,
            input_format=args.input_format,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            **size,
        )
    for m in manifests.values():
        t = m.totals
        print(
            f"{m.url}: {t['shards']} shards, {t['samples']} samples x {m.seq_len} tokens ({m.dtype}), "
            f"{t['documents']} documents, {t['dropped_tail_tokens']} tail tokens dropped"
        )
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
