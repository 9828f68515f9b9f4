"""Tables and plots of the left-to-right gap study from the runs bench/ar_gap_run.py leaves in OUT.

The run list (bench/ar_gap_runs.txt) says which runs exist and how they were configured; each run's
metrics.jsonl is its validation curve (exact l2r NLL, nats/token, every `train.eval_every` steps) and
config.yaml its resolved config, from which training FLOPs per token come (model/flops.py).

For every variant: the final validation NLL (mean over seeds, each seed listed), its difference from
the AR run of the same preset at equal optimizer steps, its training FLOPs relative to that AR run,
and, where `+random` asked for it, the random-order NLL (4 orders, exact each). For presets with a
constant learning rate (the study and scaling sizes) the model at step k of a run is the model a
k-step run would give, so the gap at equal FLOPs is read off the curves: ARMD's NLL interpolated at
AR's final FLOPs. For the cosine tiny-cpu preset, equal FLOPs need their own runs (`eqflops`).

Writes OUT_DOCS/results.md, OUT_DOCS/summary.json and the plots curves_tiny.png, curves_study.png
and scaling.png (those whose runs exist).

    python bench/ar_gap_report.py --out /tmp/armd_ar_gap --docs docs/ar_gap
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import yaml  # noqa: E402
from ar_gap_run import finished, parse_run_list  # noqa: E402

from armd_scale.config import config_from_dict  # noqa: E402
from armd_scale.model.flops import training_flops_per_token  # noqa: E402

# Groups in report order: title and what the group asks.
GROUPS = {
    "table": ("The reported table, reproduced", "tiny-cpu, l2r only, 600 steps, cosine lr."),
    "cause": (
        "The cause: the previous token, given directly",
        "tiny-cpu, l2r only; `previous_block_input` adds the mean embedding of the block before (x_{n-1} "
        "under l2r) to G0: the paper's rejected Shift, a diagnostic.",
    ),
    "pstart": ("Positional start and PE-table coupling", "tiny-cpu; `old` = previous default input."),
    "pe": ("PE table: init, width, scale of G0, learning rate", "tiny-cpu, l2r only."),
    "neighbour": ("Neighbour attention: heads, with and without the prefix sum", "tiny-cpu, l2r only."),
    "optim": ("Learning rate and warm-up, ARMD (new default) vs AR", "tiny-cpu, l2r only."),
    "capacity": ("Capacity: two-stream layers, depth, equal FLOPs", "tiny-cpu, l2r only."),
    "anyorder": (
        "Beyond left to right: progressive and random-order training",
        "tiny-cpu; validation l2r NLL plus the random-order NLL (4 orders, exact each).",
    ),
    "study": ("The reproduction study's size", "L=6, d=256, 300 steps, constant lr 2e-3, l2r only."),
    "scaleM": ("Scaling: L=8, d=384", "15.7M parameters (AR), 160 steps of 4,096 tokens, constant lr 1.33e-3."),
    "scaleL": ("Scaling: L=8, d=512", "27M parameters (AR), 120 steps of 4,096 tokens, constant lr 1e-3."),
}


def read_curve(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["val/nll"]) for r in rows if "val/nll" in r]


def run_facts(run_dir: Path) -> dict | None:
    """Curve, FLOPs per training token, tokens per step and random-order NLL of one finished run.

    A run stopped before its last step counts too when its learning rate is constant after warm-up:
    then its model at step k is the model a k-step run would have reached, so its numbers are read at
    the last step it evaluated (marked `partial`). Other unfinished runs are left out."""
    if not (run_dir / "config.yaml").exists():
        return None
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg = config_from_dict(raw, str(run_dir / "config.yaml"))
    curve = read_curve(run_dir)
    partial = not finished(run_dir)
    if partial and (cfg.train.lr_schedule != "constant" or len(curve) < 2):
        return None
    facts = {
        "curve": curve,
        "final": curve[-1][1],
        "partial": partial,
        "planned_steps": cfg.train.steps,
        "steps": curve[-1][0] if partial else cfg.train.steps,
        "flops_per_token": training_flops_per_token(cfg.model, cfg.data.seq_len),
        "tokens_per_step": cfg.train.global_batch_size * cfg.data.seq_len,
        "constant_lr": cfg.train.lr_schedule == "constant",
        "shape": f"L={cfg.model.n_layers}, d={cfg.model.d_model}",
    }
    random_json = run_dir / "eval_random.json"
    if random_json.exists():
        facts["random_nll"] = json.loads(random_json.read_text())["nll_per_token"]
    return facts


def interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (x, y) points at x; None outside their range."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return None


def collect(out: Path, runs_file: Path) -> dict:
    """variants[(group, name)] = {preset, overrides, seeds: {seed: facts}}."""
    _, runs = parse_run_list(runs_file)
    variants: dict = {}
    for run in runs:
        v = variants.setdefault(
            (run.group, run.name), {"group": run.group, "name": run.name, "preset": run.preset, "seeds": {}}
        )
        v["overrides"] = run.overrides
        v["spec"] = run.spec
        facts = run_facts(run.dir(out))
        if facts is not None:
            v["seeds"][run.seed] = facts
    return variants


def summarize(variants: dict) -> list[dict]:
    """One row per variant with its numbers, relative to the preset's reference AR ('ar'): every seed of
    every group's 'ar' run of that preset with the same overrides as the first, pooled (the same model
    trained with more seeds, e.g. a second seed listed in another group)."""
    reference: dict = {}
    for v in variants.values():
        if v["name"] != "ar" or not v["seeds"]:
            continue
        ref = reference.setdefault(v["preset"], {**v, "seeds": {}})
        if v["overrides"] == ref["overrides"]:
            ref["seeds"] = {**ref["seeds"], **v["seeds"]}
    for ref in reference.values():  # a run still in progress joins the reference only when it is alone
        finished = {seed: f for seed, f in ref["seeds"].items() if not f["partial"]}
        ref["seeds"] = finished or ref["seeds"]
    rows = []
    for v in variants.values():
        if not v["seeds"]:
            continue
        finals = [f["final"] for f in v["seeds"].values()]
        any_facts = next(iter(v["seeds"].values()))
        row = {
            "group": v["group"],
            "name": v["name"],
            "preset": v["preset"],
            "overrides": v["overrides"],
            "spec": v["spec"],
            "seeds": sorted(v["seeds"]),
            "final_per_seed": [v["seeds"][s]["final"] for s in sorted(v["seeds"])],
            "final": statistics.fmean(finals),
            "steps": any_facts["steps"],
            "partial_of": any_facts["planned_steps"] if any(f["partial"] for f in v["seeds"].values()) else None,
            "train_flops": any_facts["flops_per_token"] * any_facts["tokens_per_step"] * any_facts["steps"],
        }
        randoms = [f["random_nll"] for f in v["seeds"].values() if "random_nll" in f]
        if randoms:
            row["random_nll"] = statistics.fmean(randoms)
        ref = reference.get(v["preset"])
        if ref is not None:
            ref_final = statistics.fmean(f["final"] for f in ref["seeds"].values())
            ref_facts = next(iter(ref["seeds"].values()))
            ref_flops = ref_facts["flops_per_token"] * ref_facts["tokens_per_step"] * ref_facts["steps"]
            row["gap_equal_steps"] = row["final"] - ref_final if row["steps"] == ref_facts["steps"] else None
            if row["gap_equal_steps"] is None and any_facts["constant_lr"] and ref_facts["constant_lr"]:
                at = interpolate(mean_curve(ref, lambda f: [(float(x), y) for x, y in f["curve"]]), row["steps"])
                row["gap_equal_steps"] = None if at is None else row["final"] - at
            row["flops_vs_ar"] = row["train_flops"] / ref_flops
            if any_facts["constant_lr"] and ref_facts["constant_lr"] and v["name"] != "ar":
                row["gap_equal_flops"] = gap_at_equal_flops(v, ref)
            elif v["name"] != "ar" and abs(row["flops_vs_ar"] - 1.0) < 0.01:  # an eqflops run: its end is AR's budget
                row["gap_equal_flops"] = row["final"] - ref_final
        rows.append(row)
    return rows


def flops_curve(facts: dict) -> list[tuple[float, float]]:
    per_step = facts["flops_per_token"] * facts["tokens_per_step"]
    return [(step * per_step, nll) for step, nll in facts["curve"]]


def mean_curve(variant: dict, x_of) -> list[tuple[float, float]]:
    """Seed-averaged curve on the points every seed has."""
    curves = [x_of(f) for f in variant["seeds"].values()]
    length = min(len(c) for c in curves)
    return [(curves[0][i][0], statistics.fmean(c[i][1] for c in curves)) for i in range(length)]


def gap_at_equal_flops(variant: dict, ref: dict) -> float | None:
    """ARMD minus AR at the FLOPs of the shorter of the two (constant-lr runs only)."""
    a, r = mean_curve(variant, flops_curve), mean_curve(ref, flops_curve)
    budget = min(a[-1][0], r[-1][0])
    ya, yr = interpolate(a, budget), interpolate(r, budget)
    return None if ya is None or yr is None else ya - yr


def gap_curve(variant: dict, ref: dict) -> list[tuple[float, float]]:
    """(training FLOPs, ARMD - AR at those FLOPs) along the runs (constant-lr runs only)."""
    a, r = mean_curve(variant, flops_curve), mean_curve(ref, flops_curve)
    points = []
    for x, ya in a:
        yr = interpolate(r, x)
        if yr is not None and x > 0:
            points.append((x, ya - yr))
    return points


def _fmt(x: float | None, spec: str = ".3f", signed: bool = False) -> str:
    if x is None:
        return "–"
    return format(x, ("+" if signed else "") + spec)


COMMON_INTRO = (
    "Validation l2r NLL (exact, nats/token) at the end of training; `gap` = variant minus the AR run of the same "
    "preset (`ar`, same schedule and steps); `FLOPs` = training FLOPs relative to that AR run; for constant-lr "
    "presets `gap (equal FLOPs)` is read off the curves at the smaller of the two runs' training FLOPs. A run "
    "marked `stopped` was cut short; its constant learning rate makes its last evaluation that of a run of that "
    "many steps, and its gap is read at that step."
)
# What each run list studies: the report's title, its introduction and the titles of its groups.
STUDIES = {
    "ar_gap_runs": {
        "title": "The left-to-right gap study: results",
        "intro": "Generated by `bench/ar_gap_report.py` from the runs of `bench/ar_gap.sh`, on the data loader of "
        "its time (before the chunked local order of docs/DATA.md). The last column is the run's line in "
        "bench/ar_gap_runs.txt: `@old` = the input before the study (no neighbour heads, W_s ~ N(0, 0.02)), "
        "`@paper` = the paper's (no positional start), `@nb` = paper + 4 neighbour heads, `@new` = nb + "
        "positional start with W_s starting at zero, `@newd` = the same with directional neighbour heads.",
        "groups": GROUPS,
    },
    "paper_model_runs": {
        "title": "The paper's model and ours: results",
        "intro": "Generated by `bench/ar_gap_report.py` from the runs of `RUNS=bench/paper_model_runs.txt bash "
        "bench/ar_gap.sh`, on today's data loader. The last column is the run's line in the run list: `@paper` = "
        "the paper's input (s + prefix sum, `model.query_input=paper`) with the recency PE start, `@shift` = the "
        "same with the PE table starting as AR's input shift (`model.pe_init=shift`), `@newd` = ours (+ 4 "
        "directional neighbour heads and the positional start, `model.query_input=neighbour`).",
        "groups": {
            "tiny": ("tiny-cpu, left to right", "tiny-cpu preset, l2r only, 600 steps, cosine lr 3e-3."),
            "tinyrandom": (
                "tiny-cpu, uniformly random orders",
                "tiny-cpu preset trained on uniformly random orders; random-order NLL = mean over 4 orders, "
                "exact each.",
            ),
            "tinyflops": (
                "tiny-cpu at equal FLOPs",
                "tiny-cpu preset, each ARMD input trained for the steps whose training FLOPs equal AR's 600 steps "
                "(cosine lr over those steps); l2r and uniformly random orders.",
            ),
            "layers": (
                "Two-stream layers at the study's size",
                "L=6, d=256, constant lr; 1, 3 (L/2, the paper's) or 6 two-stream layers, read at equal FLOPs.",
            ),
            **{k: v for k, v in GROUPS.items() if k in ("study", "scaleM", "scaleL")},
        },
    },
}


def study_of(runs_file: Path) -> dict:
    return STUDIES.get(runs_file.stem, STUDIES["ar_gap_runs"])


def markdown(rows: list[dict], study: dict | None = None) -> str:
    study = study or STUDIES["ar_gap_runs"]
    groups = study["groups"]
    lines = [f"# {study['title']}", "", study["intro"] + " " + COMMON_INTRO, ""]
    by_group = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    for group in [*groups, *sorted(set(by_group) - set(groups))]:
        if group not in by_group:
            continue
        title, what = groups.get(group, (group, ""))
        lines += [f"## {title}", "", what, ""]
        has_random = any("random_nll" in r for r in by_group[group])
        has_eqf = any(r.get("gap_equal_flops") is not None for r in by_group[group])
        header = "| variant | val NLL | per seed | gap (equal steps) |"
        header += " gap (equal FLOPs) |" if has_eqf else ""
        header += " FLOPs | steps |" + (" random-order NLL |" if has_random else "") + " run (the run list) |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for r in by_group[group]:
            cells = [
                r["name"],
                _fmt(r["final"]),
                ", ".join(_fmt(x) for x in r["final_per_seed"]),
                _fmt(r.get("gap_equal_steps"), signed=True),
            ]
            if has_eqf:
                cells.append(_fmt(r.get("gap_equal_flops"), signed=True))
            steps = f"{r['steps']} of {r['partial_of']} (stopped)" if r.get("partial_of") else str(r["steps"])
            cells += [_fmt(r.get("flops_vs_ar"), ".2f") + "x", steps]
            if has_random:
                cells.append(_fmt(r.get("random_nll")))
            cells.append("`" + r["spec"].replace("model.", "") + "`" if r["spec"] else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(variants: dict, preset: str, names: list[tuple[str, str]], path: Path) -> bool:
    """Validation curves of the named variants (group, name) of one preset against steps and FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [(g, n) for g, n in names if variants.get((g, n), {}).get("seeds")]
    if not chosen:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for g, n in chosen:
        v = variants[(g, n)]
        steps = mean_curve(v, lambda f: [(float(s), y) for s, y in f["curve"]])
        flops = mean_curve(v, flops_curve)
        shown = CURVE_LABELS.get(n, n)
        label = f"{shown} ({len(v['seeds'])} seed{'s' if len(v['seeds']) > 1 else ''})"
        axes[0].plot([x for x, _ in steps], [y for _, y in steps], marker=".", label=label)
        axes[1].plot([x / 1e12 for x, _ in flops], [y for _, y in flops], marker=".", label=label)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("training TFLOP")
    for ax in axes:
        ax.set_ylabel("validation l2r NLL (nats/token)")
        ax.grid(alpha=0.3)
    top = max(y for g, n in chosen for _, y in variants[(g, n)]["seeds"][min(variants[(g, n)]["seeds"])]["curve"][1:])
    for ax in axes:
        ax.set_ylim(top=min(top + 0.2, ax.get_ylim()[1]))
    axes[1].legend(fontsize=8)
    fig.suptitle(f"left-to-right order only, preset '{preset}'")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scaling(variants: dict, rows: list[dict], path: Path) -> dict:
    """Gap (ARMD - AR, nats/token) against training FLOPs, one line per size and ARMD variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    refs = {v["preset"]: v for v in variants.values() if v["name"] == "ar" and v["seeds"]}
    for (group, name), v in variants.items():
        in_sweep = group == "study" or group.startswith("scale")
        if not in_sweep or name not in SCALING_NAMES or not v["seeds"] or v["preset"] not in refs:
            continue
        facts = next(iter(v["seeds"].values()))
        if facts["constant_lr"]:
            curves[f"{facts['shape']}: {SCALING_NAMES[name]}"] = gap_curve(v, refs[v["preset"]])
    if not curves:
        return {}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, pts in sorted(curves.items()):
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("ARMD - AR val l2r NLL at equal FLOPs (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {k: [[x, y] for x, y in v] for k, v in curves.items()}


# Variants drawn in the scaling plot, with their labels.
SCALING_NAMES = {
    "newd": "ours (neighbour heads) l2r",
    "newd-progressive": "ours (neighbour heads) progressive",
    "new": "ours, symmetric heads, l2r",
    "old": "old ARMD l2r",
    "paper": "paper's input l2r",
    "paper-progressive": "paper's input progressive",
    "shift": "paper's input, shift start, l2r",
    "shift-progressive": "paper's input, shift start, progressive",
}
CURVE_LABELS = {"newd": "ours (neighbour heads)", "paper": "paper's input", "shift": "paper's input, shift start"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the study's output dir (runs/ inside)")
    ap.add_argument("--runs", type=Path, default=REPO / "bench" / "ar_gap_runs.txt")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "ar_gap")
    args = ap.parse_args(argv)
    variants = collect(args.out, args.runs)
    rows = summarize(variants)
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "results.md").write_text(markdown(rows, study_of(args.runs)))
    key = [("table", "ar"), ("table", "ar-L1"), ("table", "old"), ("table", "paper"), ("pstart", "nb")]
    key += [("pstart", "nb-start-zero-init"), ("anyorder", "newd")]  # symmetric, and neighbour heads
    key += [("tiny", n) for n in ("ar", "paper", "shift", "newd")]
    plot_curves(variants, "tiny", key, args.docs / "curves_tiny.png")
    study = [("study", n) for n in ("ar", "old", "paper", "shift", "newd", "newd-progressive")]
    plot_curves(variants, "study", study, args.docs / "curves_study.png")
    scaling = plot_scaling(variants, rows, args.docs / "scaling.png")
    curves = {
        f"{g}/{n}": {str(s): f["curve"] for s, f in v["seeds"].items()} for (g, n), v in variants.items() if v["seeds"]
    }
    summary = {"variants": rows, "curves": curves, "scaling_gap_vs_flops": scaling}
    tmp = args.docs / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(args.docs / "summary.json")
    print(f"ar_gap report: {len(rows)} variants -> {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
