"""`armd eval harness`: EleutherAI lm-evaluation-harness tasks on an armd_scale checkpoint.

    armd eval harness --checkpoint runs/owt-small --tasks lambada_openai,hellaswag --batch-size 16
    armd eval harness --checkpoint runs/tiny-cpu --tasks my_task --include-path tasks/ --json out.json

Registers the `armd` lm_eval model (armd_scale/eval/harness.py) and calls lm_eval.simple_evaluate.
lm-eval is an optional extra: pip install 'armd_scale[harness]'.
"""

from __future__ import annotations

import argparse
import sys


def add_harness_args(p: argparse.ArgumentParser) -> None:
    from .common import add_device_arg, add_weights_arg, positive_int

    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run dir, checkpoint folder or export dir")
    p.add_argument("--tasks", required=True, metavar="T,T,...", help="lm_eval task or group names, comma-separated")
    p.add_argument("--include-path", metavar="DIR", help="a folder of task YAML files (local tasks)")
    p.add_argument("--num-fewshot", type=int, metavar="N", help="few-shot examples (default: the task's)")
    p.add_argument("--limit", type=float, metavar="N", help="first N documents per task (< 1: a fraction); testing")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B", help="sequences per forward pass")
    p.add_argument(
        "--streams", type=positive_int, default=1, metavar="S", help="generate_until with S SBP streams (armd)"
    )
    p.add_argument(
        "--mc-samples",
        type=positive_int,
        default=128,
        metavar="K",
        help="arch mdlm: Monte-Carlo draws per ELBO (default 128)",
    )
    p.add_argument(
        "--steps", type=positive_int, metavar="T", help="arch mdlm: sampler steps (default: the generated length)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and of the mdlm ELBO's masks")
    p.add_argument("--float64", action="store_true", help="model and log-softmax in float64 (default float32)")
    add_device_arg(p)
    add_weights_arg(p)
    p.add_argument("--log-samples", action="store_true", help="keep every request and response in the JSON")
    p.add_argument("--json", metavar="OUT", help="write lm_eval's results here")


def run_harness(args: argparse.Namespace) -> int:
    from .common import chosen_device, fail, write_json

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print(
            "armd eval harness: error: lm-evaluation-harness is not installed: pip install 'armd_scale[harness]'",
            file=sys.stderr,
        )
        return 1
    try:
        device = chosen_device(args, "eval harness")
        results = evaluate_harness(args, str(device))
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        return fail("eval harness", e)
    from lm_eval.utils import make_table

    print(make_table(results))
    if args.json:
        import json

        from lm_eval.utils import handle_non_serializable

        write_json(args.json, json.loads(json.dumps(results, default=handle_non_serializable)))
    return 0


def evaluate_harness(args: argparse.Namespace, device: str) -> dict:
    """lm_eval.simple_evaluate with the registered `armd` model; returns lm_eval's results dict."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    import armd_scale.eval.harness  # noqa: F401  (registers the "armd" model)

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks names no task")
    model_args = {
        "checkpoint": args.checkpoint,
        "streams": args.streams,
        "mc_samples": args.mc_samples,
        "seed": args.seed,
        "float64": args.float64,
    }
    if args.steps is not None:
        model_args["steps"] = args.steps
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results = simple_evaluate(
        model="armd",
        model_args=model_args,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        device=device,
        limit=limit,
        log_samples=args.log_samples,
        task_manager=TaskManager(include_path=args.include_path) if args.include_path else TaskManager(),
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )
    if results is None:
        raise ValueError("lm_eval returned no results")
    return results
