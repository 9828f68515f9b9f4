"""`armd generate`: sample text from a checkpoint, left to right (S=1) or with S SBP streams.

    armd generate --checkpoint runs/tiny-cpu --prompt "def " --length 64 --streams 4 --num-samples 2
    armd generate --checkpoint runs/tiny-cpu --infill "The [MASK:4] is [MASK] fast" --streams 1

Decoding is the KV-cached sampler of `armd_scale.generate`; an unconditional sample of N tokens costs
S + N/S - 1 forward calls, a P-token prompt S + (N-P)/S - 1. `--infill` keeps the text around the
`[MASK]` (one token) and `[MASK:k]` (k tokens) spans and fills the spans, conditioned on text on
both sides. Runs trained on ids only (synthetic sources) read and write ids separated by spaces.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import cast

from .common import add_device_arg, add_weights_arg, chosen_device, non_negative_float, positive_int, probability

MASK_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="run dir, checkpoint folder or export dir")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--prompt", metavar="TEXT", help="text the samples continue")
    what.add_argument("--infill", metavar="TEXT", help="text with [MASK] / [MASK:k] spans to fill")
    parser.add_argument(
        "--length",
        type=positive_int,
        metavar="N",
        help="tokens per sample, prompt included (default: the run's seq_len; ignored with --infill)",
    )
    parser.add_argument("--streams", type=positive_int, default=1, metavar="S", help="SBP streams (1 = left to right)")
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="T",
        help="arch mdlm: denoising steps of the ancestral sampler (default: the length)",
    )
    parser.add_argument(
        "--num-samples", type=positive_int, default=1, metavar="K", help="samples, decoded as one batch"
    )
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=probability, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true", help="forward passes and sampling softmax in float64")
    add_device_arg(parser)
    add_weights_arg(parser)
    parser.add_argument("--json", metavar="OUT", help="also write {streams, length, forward_calls, seconds, samples}")
    parser.set_defaults(func=run)


def parse_infill(text: str, codec) -> tuple[list[int], list[bool]]:
    """Token ids and a known-mask for TEXT with [MASK] / [MASK:k] spans (span tokens are placeholders 0)."""
    tokens: list[int] = []
    known: list[bool] = []
    pos = 0
    for m in MASK_SPAN.finditer(text):
        ids = codec.encode(text[pos : m.start()]) if m.start() > pos else []
        tokens += ids
        known += [True] * len(ids)
        k = int(m.group(1) or 1)
        if k < 1:
            raise ValueError(f"--infill span {m.group(0)} must hold at least one token")
        tokens += [0] * k
        known += [False] * k
        pos = m.end()
    if pos == 0:
        raise ValueError("--infill text has no [MASK] or [MASK:k] span to fill")
    ids = codec.encode(text[pos:]) if pos < len(text) else []
    return tokens + ids, known + [True] * len(ids)


def run(args: argparse.Namespace) -> int:
    try:
        doc = generate_samples(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"armd generate: error: {e}", file=sys.stderr)
        return 1
    many = len(doc["samples"]) > 1
    for i, sample in enumerate(doc["samples"]):
        if many:
            print(f"=== sample {i} ===")
        print(sample["text"])
    print(
        f"[{doc['forward_calls']} forward calls, {doc['seconds']:.2f} s, {doc['tokens_per_s']:.1f} tokens/s]",
        file=sys.stderr,
    )
    from .common import say_weights

    say_weights("generate", doc["weights"])
    if args.json:
        from .common import write_json

        write_json(args.json, doc)
    return 0


def generate_samples(args: argparse.Namespace) -> dict:
    """The `armd generate --json` document (schema `generate` in armd_scale/eval/schema.py). The model
    decides how it is sampled (`armd_scale.generate.sample`)."""
    import torch

    from armd_scale.eval.text import codec_for
    from armd_scale.generate import SampleRequest, sample
    from armd_scale.model import Model

    from ..checkpoints.pretrained import load_pretrained

    dtype = torch.float64 if args.float64 else torch.float32
    if args.num_samples < 1 or args.streams < 1:
        raise ValueError(f"--num-samples {args.num_samples} and --streams {args.streams} must be >= 1")
    pre = load_pretrained(args.checkpoint, device=chosen_device(args, "generate"), dtype=dtype)
    codec = codec_for(pre)
    max_len = pre.config.model.max_seq_len
    settings = dict(
        batch_size=args.num_samples,
        streams=args.streams,
        steps=args.steps,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        sample_dtype=dtype,
    )
    if args.infill is not None:
        ids, known = parse_infill(args.infill, codec)
        length, known_count = len(ids), sum(known)
        if length > max_len:
            raise ValueError(f"--infill text is {length} tokens, more than the model's max_seq_len={max_len}")
        tokens = torch.tensor(ids).expand(args.num_samples, -1).clone()
        request = SampleRequest(infill=(tokens, torch.tensor(known)), **settings)
    else:
        length = args.length or min(pre.config.data.seq_len, max_len)
        if length > max_len:
            raise ValueError(f"--length {length} exceeds the model's max_seq_len={max_len}")
        prompt = codec.encode(args.prompt) if args.prompt else []
        known_count = len(prompt)
        prompt_t = torch.tensor(prompt, dtype=torch.long) if prompt else None
        request = SampleRequest(length=length, prompt=prompt_t, **settings)
    out = sample(cast(Model, pre.model), request)  # load_pretrained builds a Model (checkpoints/model_io.py)
    rows = out.tokens.cpu()
    generated = (length - known_count) * args.num_samples
    return {
        "streams": args.streams,
        "length": length,
        "forward_calls": out.forward_calls,
        "seconds": out.seconds,
        "tokens_per_s": generated / out.seconds if out.seconds > 0 else float("inf"),
        "samples": [{"tokens": row.tolist(), "text": codec.decode(row.tolist())} for row in rows],
        "checkpoint": str(pre.source),
        "step": pre.step,
        "weights": pre.weights,
        "prompt_tokens": known_count if args.infill is None else 0,
        "known_tokens": known_count,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "sample_dtype": str(dtype).removeprefix("torch."),
        "mode": "infill" if args.infill is not None else "sample",
        "arch": pre.config.model.arch,
        **({"diffusion_steps": out.diffusion_steps} if out.diffusion_steps is not None else {}),
    }
