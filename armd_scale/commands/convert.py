"""`armd convert --checkpoint PATH --to universal|export|hf --out DIR`.

universal: a DeepSpeed checkpoint (run dir or step folder) -> a folder holding only DeepSpeed's
universal form plus our meta.json/COMPLETE; copy it to RUN_DIR/checkpoints/step_N to resume on
another world size or TP degree.
export: a DeepSpeed or universal checkpoint -> model.safetensors + config.json + tokenizer/, which
`armd generate` and `armd eval` load without DeepSpeed.
hf: any checkpoint -> a Hugging Face transformers folder (custom code, or a stock Llama for an `ar`
run) that `AutoModelForCausalLM` / `AutoTokenizer` load without armd_scale (checkpoints/hf_export.py).

Every conversion runs the source and the result on one fixed batch and prints the max abs logit
difference (0 for fp32, or the conversion fails and writes nothing). Progress goes to stderr; the
result to stdout (as JSON with --json). Exit codes: 0 converted; 1 refused or failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..checkpoints.report import ConversionReport, Progress


def register(parser: argparse.ArgumentParser) -> None:
    from .common import add_weights_arg

    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="run dir, checkpoint folder (step_N), universal folder, or .../universal/step_N",
    )
    parser.add_argument(
        "--to",
        required=True,
        choices=("universal", "export", "hf"),
        help="universal: resumable; export: weights for armd_scale; hf: a transformers folder (AutoModelForCausalLM)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="export only: dtype of model.safetensors (default fp32, validated exact)",
    )
    parser.add_argument("--no-tokenizer", action="store_true", help="export, hf: do not copy the tokenizer")
    add_weights_arg(parser)  # export, hf; universal converts DeepSpeed's (raw) weights and copies the EMA along
    parser.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "armd", "llama"),
        help="hf only: auto (a stock Llama for an ar run with SwiGLU, else custom code), armd (custom code), llama",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="hf only: also upload the folder to this Hub repository")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints.report import ConversionError, Progress
    from ..config import ConfigError

    progress = Progress("armd convert", quiet=args.quiet)
    stdout = sys.stdout
    try:
        # Library output (DeepSpeed logs and reports on stdout) goes to stderr: stdout is the result only.
        with contextlib.redirect_stdout(sys.stderr):
            report = _convert(args, progress)
    except (ConversionError, ConfigError, OSError, ValueError) as e:  # UnsafeCheckpointError is a ValueError
        print(f"armd convert: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.summary(), file=stdout)
    return 0


def _convert(args: argparse.Namespace, progress: Progress) -> ConversionReport:
    from ..checkpoints.report import ConversionError

    if args.to != "hf" and (args.layout != "auto" or args.push_to_hub):
        raise ConversionError("--layout and --push-to-hub apply to --to hf only")
    if args.to == "hf":
        from ..checkpoints.hf_export import export_hf

        if args.dtype != "fp32":
            raise ConversionError("--to hf writes fp32 weights (validated); --dtype applies to --to export")
        return export_hf(
            args.checkpoint,
            args.out,
            tokenizer=not args.no_tokenizer,
            layout=args.layout,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            progress=progress,
        )
    if args.to == "universal":
        from ..checkpoints.to_universal import to_universal

        if args.dtype != "fp32" or args.no_tokenizer:
            raise ConversionError("--dtype and --no-tokenizer apply to --to export only")
        return to_universal(args.checkpoint, args.out, overwrite=args.overwrite, progress=progress)
    from ..checkpoints.export import export

    return export(
        args.checkpoint,
        args.out,
        dtype=args.dtype,
        tokenizer=not args.no_tokenizer,
        overwrite=args.overwrite,
        progress=progress,
    )
