"""`armd eval ppl` (likelihoods of held-out data) and `armd eval sbp` (the SBP speed/quality sweep).

Every number says which likelihood it is: `l2r` and `random` are exact, `diffusion` is an ELBO
(docs/EVALUATION.md).
"""

from __future__ import annotations

import argparse
import sys

from ..data.prepare.formats import INPUT_FORMATS
from ..data.prepare.readers import DOC_SPLITS
from .common import (
    add_device_arg,
    chosen_device,
    fail,
    non_negative_float,
    positive_int,
    probability,
    say_weights,
    write_json,
)


def register(parser: argparse.ArgumentParser) -> None:
    from .eval_harness import add_harness_args, run_harness
    from .eval_zeroshot import add_zeroshot_args, run_zeroshot

    sub = parser.add_subparsers(dest="eval_command", metavar="{ppl,sbp,zeroshot,harness}", required=True)
    ppl = sub.add_parser(
        "ppl",
        help="NLL / perplexity / bits per byte of shards or text",
        description="Exact l2r NLL, random-order NLL over K orders, or the diffusion(T) ELBO.",
    )
    add_ppl_args(ppl)
    ppl.set_defaults(func=run_ppl)
    sbp = sub.add_parser(
        "sbp",
        help="sweep SBP streams: forward calls, tokens/s, gen PPL, entropy",
        description="Offline SBP sweep; writes results.json, results.md and results.png.",
    )
    add_sbp_args(sbp)
    sbp.set_defaults(func=run_sbp)
    zeroshot = sub.add_parser(
        "zeroshot",
        help="zero-shot perplexity suite of SEDD/RADD, MDLM and BD3-LM (Table 1, MDLM's Table 3) on local files",
        description="LAMBADA, WikiText-2/103, PTB, LM1B, AG News, PubMed and ArXiv under a published protocol "
        "(sedd, mdlm or bd3lm): detokenizers, blocks, exact l2r NLL (armd, ar) or the T-step ELBO (mdlm).",
    )
    add_zeroshot_args(zeroshot)
    zeroshot.set_defaults(func=run_zeroshot)
    harness = sub.add_parser(
        "harness",
        help="lm-evaluation-harness tasks through the `armd` lm_eval model",
        description="Calls lm_eval.simple_evaluate with this checkpoint (needs the harness extra).",
    )
    add_harness_args(harness)
    harness.set_defaults(func=run_harness)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:  # only reached if a sub-subcommand forgot its func
    print("armd eval: choose ppl, sbp, zeroshot or harness", file=sys.stderr)
    return 2


def _common(p: argparse.ArgumentParser) -> None:
    from .common import add_weights_arg

    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run dir, checkpoint folder or export dir")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    add_weights_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_ppl_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="shard-set directories (with manifest.json) and/or text inputs, as `armd shards --input` reads them",
    )
    p.add_argument(
        "--order",
        choices=("l2r", "random", "diffusion"),
        default="l2r",
        help="l2r: exact; random: exact per order, mean over --orders; diffusion: ELBO with --steps",
    )
    p.add_argument(
        "--orders",
        type=positive_int,
        default=None,
        metavar="K",
        help="random orders / diffusion trajectories (default 8 for random and diffusion)",
    )
    p.add_argument("--steps", type=positive_int, metavar="T", help="diffusion steps T (needed for --order diffusion)")
    p.add_argument(
        "--schedule", choices=("loglinear", "cosine"), default="loglinear", help="diffusion masking schedule"
    )
    p.add_argument("--max-tokens", type=positive_int, metavar="N", help="score only the first N // seq_len windows")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B", help="windows per forward pass")
    p.add_argument(
        "--seq-len", type=positive_int, help="window length for text input (default: the shard set's, else the run's)"
    )
    p.add_argument("--float64", action="store_true", help="model and log-softmax in float64 (default float32)")
    p.add_argument("--text-field", default="text", help="JSON field holding the text in .jsonl inputs")
    p.add_argument("--doc-split", choices=DOC_SPLITS, default="file", help="what a document is in .txt inputs")
    p.add_argument("--input-format", choices=INPUT_FORMATS, default="auto", help="format of text input files")
    p.add_argument("--json", metavar="OUT", help="write the result (docs/EVALUATION.md) to this file")


def add_sbp_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--streams", type=_int_list, default=[1, 2, 4, 8], metavar="S,S,...", help="default 1,2,4,8")
    p.add_argument(
        "--length", type=positive_int, required=True, metavar="N", help="tokens per sample (every S must divide it)"
    )
    p.add_argument("--num-samples", type=positive_int, default=16, metavar="K", help="samples per S (default 16)")
    p.add_argument("--batch-size", type=positive_int, metavar="B", help="samples decoded together (default: all K)")
    p.add_argument(
        "--judge",
        metavar="PATH|NAME",
        help="armd checkpoint, transformers causal-LM directory, or hub name in the local cache (e.g. gpt2-large); "
        "default: the generator itself",
    )
    p.add_argument(
        "--judge-dtype",
        choices=("float32", "float64"),
        default="float32",
        help="transformers judges: precision (default float32, as MDLM)",
    )
    p.add_argument(
        "--judge-batch-size",
        type=positive_int,
        default=8,
        metavar="B",
        help="transformers judges: samples per pass (8)",
    )
    p.add_argument("--temperature", type=non_negative_float, default=1.0)
    p.add_argument("--top-p", type=probability, default=1.0)
    p.add_argument(
        "--sample-dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the sampling softmax (default float64: float32 shifts gen PPL)",
    )
    p.add_argument("--float64", action="store_true", help="run the generator's forward passes in float64 too")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/results.json, results.md, results.png")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def run_ppl(args: argparse.Namespace) -> int:
    from armd_scale.eval.ppl import eval_ppl

    orders = args.orders if args.orders is not None else (1 if args.order == "l2r" else 8)
    try:
        device = chosen_device(args, "eval ppl")
        doc = eval_ppl(
            args.checkpoint,
            args.data,
            kind=args.order,
            orders=orders,
            steps=args.steps,
            schedule=args.schedule,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            float64=args.float64,
            seq_len=args.seq_len,
            device=device,
            text_field=args.text_field,
            doc_split=args.doc_split,
            input_format=args.input_format,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as e:
        return fail("eval ppl", e)
    bpb = "n/a (no text tokenizer)" if doc["bits_per_byte"] is None else f"{doc['bits_per_byte']:.4f}"
    spread = ""
    if doc["kind"] != "l2r":
        k = doc.get("orders", doc.get("trajectories"))
        spread = f", K={k}: std {doc['nll_std']:.4f}, min {doc['nll_min']:.4f}, max {doc['nll_max']:.4f}"
    label = f"diffusion(T={doc['steps']}) ELBO" if doc["kind"] == "diffusion" else f"{doc['kind']} exact NLL"
    print(
        f"{label}: {doc['nll_per_token']:.4f} nats/token, ppl {doc['ppl']:.3f}, bits/byte {bpb} "
        f"over {doc['tokens']} tokens{spread}"
    )
    say_weights("eval ppl", doc["weights"])
    if args.json:
        write_json(args.json, doc)
    return 0


def run_sbp(args: argparse.Namespace) -> int:
    from armd_scale.eval.sbp import run_sbp_eval

    try:
        device = chosen_device(args, "eval sbp")
        doc = run_sbp_eval(
            args.checkpoint,
            args.out,
            streams=args.streams,
            length=args.length,
            num_samples=args.num_samples,
            judge=args.judge,
            batch_size=args.batch_size,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            sample_dtype=args.sample_dtype,
            float64=args.float64,
            judge_dtype=args.judge_dtype,
            judge_batch_size=args.judge_batch_size,
            device=device,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, ImportError) as e:
        return fail("eval sbp", e)
    from armd_scale.eval.sbp import markdown_table

    print(markdown_table(doc), end="")
    print(f"wrote {args.out}/results.json, results.md, results.png")
    say_weights("eval sbp", doc["weights"])
    return 0
