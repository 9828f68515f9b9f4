"""`armd eval zeroshot`: the zero-shot perplexity suite of SEDD / RADD / MDLM on local files.

    armd eval zeroshot --checkpoint runs/owt-small --task wikitext2 --data wiki.train.raw \
        --task lambada --data lambada_test.jsonl --json zs.json --markdown zs.md

Each `--task` takes the files of the following `--data` (one `--data` per `--task`, in order).
Nothing is downloaded. Prints the Table-1 style markdown; see docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import sys


def add_zeroshot_args(p: argparse.ArgumentParser) -> None:
    from armd_scale.eval.zeroshot import PROTOCOLS
    from armd_scale.eval.zeroshot_data import BENCHMARKS

    from .common import add_device_arg, add_weights_arg, non_negative_int, positive_int

    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run dir, checkpoint folder or export dir")
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
        help="the files of the matching --task (.raw/.txt lines, .jsonl, .parquet; compressed or not)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="sedd",
        help="sedd (default): raw blocks of L tokens, SEDD/RADD; mdlm: [BOS] + L-2 tokens + [EOS]",
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", metavar="OUT", help="write the result document here")
    p.add_argument("--markdown", metavar="OUT", help="write the markdown tables here")


def run_zeroshot(args: argparse.Namespace) -> int:
    from armd_scale.eval.zeroshot import evaluate_zeroshot, markdown_table

    from .common import chosen_device, fail, write_json, write_text

    if len(args.task) != len(args.data):
        print(
            f"armd eval zeroshot: error: {len(args.task)} --task but {len(args.data)} --data; "
            "give each --task its own --data",
            file=sys.stderr,
        )
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
        )
    except (ValueError, FileNotFoundError, OSError) as e:
        return fail("eval zeroshot", e)
    table = markdown_table(doc)
    print(table, end="")
    if args.json:
        write_json(args.json, doc)
    if args.markdown:
        write_text(args.markdown, table)
    return 0
