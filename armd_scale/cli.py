"""The `armd` command.

Each subcommand lives in its own module under `armd_scale.commands` and exposes
`register(subparsers)`; modules are imported only when their subcommand runs, so `armd --help`
stays fast and a missing optional dependency only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("armd_scale.commands.train", "train or resume a model (single process, torchrun, deepspeed, srun)"),
    "tokenizer": (
        "armd_scale.commands.tokenizer",
        "train a SentencePiece, byte-level BPE or WordPiece tokenizer (its SHA-256 is its identity)",
    ),
    "shards": (
        "armd_scale.commands.shards",
        "tokenize text into WebDataset shards + manifest, or --verify a shard set",
    ),
    "convert": (
        "armd_scale.commands.convert",
        "DeepSpeed checkpoint -> universal checkpoint or a DeepSpeed-free export, validated",
    ),
    "inspect": ("armd_scale.commands.inspect", "summarize a run, checkpoint or export; --diff A B compares two"),
    "eval": ("armd_scale.commands.eval", "likelihoods (exact l2r/random, diffusion ELBO, bits/byte) and the SBP sweep"),
    "generate": (
        "armd_scale.commands.generate",
        "sample text with a KV cache: left to right, SBP streams, prompts, infilling",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != only:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        module = importlib.import_module(module_name)
        module.register(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop the `--local_rank=N` the deepspeed launcher inserts before our arguments.

    Our code reads LOCAL_RANK from the environment (set by every launcher); the flag is only moved
    there when the environment lacks it.
    """
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        for flag in ("--local_rank", "--local-rank"):
            if arg == flag and i + 1 < len(argv):
                os.environ.setdefault("LOCAL_RANK", argv[i + 1])
                i += 2
                break
            if arg.startswith(flag + "="):
                os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
                i += 1
                break
        else:
            out.append(arg)
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if not hasattr(args, "raw_weights"):  # reads no checkpoint: nothing to import (armd shards stays torch-free)
        return int(args.func(args) or 0)
    from .checkpoints.source import preferred_weights

    with preferred_weights("raw" if args.raw_weights else "ema"):  # commands/common.add_weights_arg
        result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
