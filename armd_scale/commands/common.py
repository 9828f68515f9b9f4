"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse

from ..config import Config, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="preset name (e.g. owt-small) or YAML path; default tiny-cpu")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
