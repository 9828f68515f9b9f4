"""`armd eval zeroshot`: the zero-shot perplexity suite of SEDD / RADD, MDLM and BD3-LM on local files.

    armd eval zeroshot --checkpoint runs/owt-small --task wikitext2 --data wiki.train.raw \
        --task lambada --data lambada_test.jsonl --json zs.json --markdown zs.md

Each `--task` takes the files of the following `--data` (one `--data` per `--task`, in order).
Nothing is downloaded. Every input is checked against the published set the protocol evaluates and
refused unless it is that set (`--allow-unverified` scores it anyway, labelled unverified);
`--fingerprint-only` prints the fingerprints and verdicts without a checkpoint. Prints the Table-1
style markdown; see docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import sys


def add_zeroshot_args(p: argparse.ArgumentParser) -> None:
    from armd_scale.eval.zeroshot_blocks import PROTOCOLS
    from armd_scale.eval.zeroshot_data import BENCHMARKS

    from .common import add_device_arg, add_weights_arg, non_negative_int, positive_int

    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="run dir, checkpoint folder or export dir (required unless --fingerprint-only)",
    )
    p.add_argument(
        "--task",
        action="append",
        required=True,
        choices=tuple(BENCHMARKS),
        help="benchmark (repeatable, each followed by its --data)",
    )
    p.add_argument(
        "--data",
        action="append",
        nargs="+",
        required=True,
        metavar="PATH",
        help="the files of the matching --task (.raw/.txt lines, .jsonl, .parquet, AG News' .csv, the "
        "scientific papers' val.txt; compressed or not)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="sedd",
        help="sedd (default), SEDD/RADD's Table 1 protocol: raw blocks of L tokens; mdlm, MDLM's Tables 1/3 "
        "protocol: [BOS] + L-2 tokens + [EOS]; bd3lm, BD3-LM's zero-shot table: the same blocks, no separator "
        "between rows, BOS never scored",
    )
    p.add_argument(
        "--num-proc",
        type=positive_int,
        metavar="N",
        help="join rows as the published code does with datasets.map(batched=True, num_proc=N): per 1000-row "
        "batch of N contiguous shards, each batch's remainder dropped (default: one stream, one remainder)",
    )
    p.add_argument("--block-len", type=positive_int, metavar="L", help="tokens per block (default: the run's seq_len)")
    p.add_argument(
        "--steps",
        type=non_negative_int,
        metavar="T",
        help="arch mdlm: 0 (default) = the continuous-time ELBO, MDLM's reported bound; T >= 1 = the T-step "
        "ELBO (T forward passes per block)",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        metavar="K",
        help="arch mdlm, continuous time: draws of the time per block, averaged (default 1; K forward passes)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B", help="blocks per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the mdlm ELBO's times and masks")
    p.add_argument("--float64", action="store_true", help="model and log-softmax in float64 (default float32)")
    add_device_arg(p)
    add_weights_arg(p)
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="score files that are not the published set the protocol evaluates (labelled 'unverified: ...')",
    )
    p.add_argument(
        "--fingerprint-only",
        action="store_true",
        help="print each task's input fingerprint and verdict as JSON; no checkpoint, nothing scored",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", metavar="OUT", help="write the result document here")
    p.add_argument("--markdown", metavar="OUT", help="write the markdown tables here")


def run_zeroshot(args: argparse.Namespace) -> int:
    from armd_scale.eval.zeroshot import evaluate_zeroshot, markdown_table

    from .common import chosen_device, fail, say_weights, write_json, write_text

    if len(args.task) != len(args.data):
        print(
            f"armd eval zeroshot: error: {len(args.task)} --task but {len(args.data)} --data; "
            "give each --task its own --data",
            file=sys.stderr,
        )
        return 2
    if args.fingerprint_only:
        return _fingerprint_only(args)
    if not args.checkpoint:
        print("armd eval zeroshot: error: --checkpoint is required (unless --fingerprint-only)", file=sys.stderr)
        return 2
    try:
        device = chosen_device(args, "eval zeroshot")
        doc = evaluate_zeroshot(
            args.checkpoint,
            list(zip(args.task, args.data, strict=True)),
            protocol=args.protocol,
            block_len=args.block_len,
            steps=args.steps,
            samples=args.samples,
            batch_size=args.batch_size,
            seed=args.seed,
            float64=args.float64,
            device=device,
            progress=not args.no_progress,
            allow_unverified=args.allow_unverified,
            num_proc=args.num_proc,
        )
    except (ValueError, FileNotFoundError, OSError) as e:
        return fail("eval zeroshot", e)
    table = markdown_table(doc)
    print(table, end="")
    say_weights("eval zeroshot", doc["weights"])
    if args.json:
        write_json(args.json, doc)
    if args.markdown:
        write_text(args.markdown, table)
    return 0


def _fingerprint_only(args: argparse.Namespace) -> int:
    """Each task's fingerprint and what verify says of it under --protocol; refusals are reported, not raised."""
    import json

    from armd_scale.eval.zeroshot_data import benchmark
    from armd_scale.eval.zeroshot_inputs import fingerprint, verify

    from .common import fail, write_json

    inputs = []
    try:
        for task, paths in zip(args.task, args.data, strict=True):
            fp = fingerprint(paths, task, benchmark(task))
            check = verify(task, args.protocol, fp, allow_unverified=True)
            inputs.append({"task": task, "split": check.label, "verified": check.verified, "fingerprint": fp.as_dict()})
    except (ValueError, FileNotFoundError, OSError) as e:
        return fail("eval zeroshot", e)
    doc = {"protocol": args.protocol, "inputs": inputs}
    print(json.dumps(doc, indent=2))
    if args.json:
        write_json(args.json, doc)
    return 0
