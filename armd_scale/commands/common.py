"""Argument and output helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import write_atomic
from ..config import Config, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="preset name (e.g. owt-small) or YAML path; default tiny-cpu")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N",
    )


def add_weights_arg(parser: argparse.ArgumentParser) -> None:
    """`--raw-weights`: a checkpoint's raw weights instead of its EMA of the weights (train.ema_decay), which
    readers take when the checkpoint has one; cli.main applies it to every checkpoint the command opens."""
    parser.add_argument(
        "--raw-weights",
        action="store_true",
        help="read a checkpoint's raw weights (model.safetensors), not its EMA of the weights (ema.safetensors, "
        "the default where the run kept one)",
    )


def say_weights(command: str, weights: str) -> None:
    """Say on stderr which weights produced a result (its document records `weights` too): the EMA of the
    weights is read by default where the run kept one, so a user comparing with raw weights must know."""
    if weights == "ema":
        print(
            f"armd {command}: used the EMA of the weights (ema.safetensors); --raw-weights reads the raw ones",
            file=sys.stderr,
        )
    else:
        print(f"armd {command}: used the raw weights (model.safetensors)", file=sys.stderr)


def chosen_device(args: argparse.Namespace, command: str):
    """Resolve `--device` (armd_scale/devices.py) and say on stderr which device the command computes on."""
    from ..devices import describe, resolve_device

    device = resolve_device(args.device)
    print(f"armd {command}: computing on {describe(device)}", file=sys.stderr)
    return device


def write_json(path: str, doc: dict) -> None:
    """Whole file or nothing: write a temporary sibling, then rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(doc, indent=1) + "\n")


def write_text(path: str, text: str) -> None:
    """Whole file or nothing, parent folders created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text)


def fail(command: str, e: Exception) -> int:
    """Report a refused or failed command on stderr; exit code 1."""
    print(f"armd {command}: error: {e}", file=sys.stderr)
    return 1


def _int_at_least(text: str, floor: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < floor:
        raise argparse.ArgumentTypeError(f"{value} must be >= {floor}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: 0 or less is an error, never a silent "use the default"."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means something (`--steps 0`: continuous time)."""
    return _int_at_least(text, 0)


def _float_in(text: str, ok, expected: str) -> float:
    """`text` as a float that satisfies `ok`, else an argparse error saying what was `expected`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} must be {expected}")
    return value


def positive_float(text: str) -> float:
    """argparse type for sizes in units (MiB, ...): finite and > 0."""
    return _float_in(text, lambda v: 0 < v < float("inf"), "a finite number > 0")


def non_negative_float(text: str) -> float:
    """argparse type for temperatures: finite and >= 0 (0 = greedy)."""
    return _float_in(text, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def probability(text: str) -> float:
    """argparse type for top-p: in (0, 1]."""
    return _float_in(text, lambda v: 0 < v <= 1, "in (0, 1]")
