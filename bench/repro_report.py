"""Tables and plots of the reproduction study from the artifacts `bench/repro.sh` leaves in REPRO_DIR.

Reads the runs' metrics.jsonl, the `armd eval ppl` / `repro_mdlm_elbo.py` JSON files, the SBP and
MDLM sample sweeps, settings.env and timings.tsv, and writes to OUT:

- results.md      every table (setup and cost, likelihoods per data set, validation curves,
                  generation, stage timings); docs/REPRODUCTION.md quotes from it;
- curves.png      validation loss against optimizer steps and against cumulative training FLOPs;
- generation.png  generative perplexity and decoding speed against forward calls;
- summary.json    the numbers behind the tables.

Every likelihood column says what it is: "exact" (an exact NLL of one factorization) or "bound"
(a negative ELBO, an upper bound on the NLL). The two are never put in one column.

    python bench/repro_report.py --repro-dir /tmp/armd_repro --out docs/repro
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from armd_scale.config import load_config  # noqa: E402
from armd_scale.model import build_model  # noqa: E402
from armd_scale.model.flops import training_flops_per_token  # noqa: E402

SETS = {
    "val": "in-domain validation (held-out paragraphs)",
    "lm1b": "LM1B dev (out of domain)",
    "wt2": "WikiText-2 validation (out of domain)",
}
# (model label, eval-file prefix, run name, which checkpoint)
MODELS = [
    ("AR", "ar-eqsteps", "ar", "equal steps"),
    ("AR", "ar", "ar", "final = equal FLOPs"),
    ("ARMD (progressive)", "armd", "armd", "final"),
    ("ARMD + SBP fine-tune", "armd-sbp", "armd-sbp", "final"),
    ("MDLM", "mdlm-eqsteps", "mdlm", "equal steps"),
    ("MDLM", "mdlm", "mdlm", "final = equal FLOPs"),
]
COLUMNS = [
    ("l2r", "l2r NLL (exact)"),
    ("random", "random-order NLL, 4 orders (exact each)"),
    ("diffusion", "diffusion(T) ELBO (bound)"),
    ("continuous", "continuous-time ELBO (bound)"),
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_settings(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = int(value)
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


class Study:
    """Everything one run of bench/repro.sh produced."""

    def __init__(self, root: Path):
        self.root = root
        self.settings = read_settings(root / "settings.env")
        self.cfg = load_config(root / "runs" / "armd" / "config.yaml")
        self.seq_len = self.cfg.data.seq_len
        self.batch = self.cfg.train.global_batch_size
        self.tokens_per_step = self.batch * self.seq_len
        self.val_windows = self.cfg.train.eval_batches * self.batch  # what each training-time validation reads
        self.flops_per_token = {
            a: training_flops_per_token(dataclasses.replace(self.cfg.model, arch=a), self.seq_len)
            for a in ("ar", "armd", "mdlm")
        }
        self.params = {
            a: sum(p.numel() for p in build_model(dataclasses.replace(self.cfg.model, arch=a)).parameters())
            for a in ("ar", "armd", "mdlm")
        }
        self.metrics = {
            name: read_jsonl(root / "runs" / name / "metrics.jsonl") for name in ("ar", "armd", "mdlm", "armd-sbp")
        }
        rows = [line.split("\t") for line in (root / "timings.tsv").read_text().splitlines()[1:]]
        self.timings = [r for r in rows if r[0] != "invocation"]
        # One row per invocation of repro.sh (more than one when a failed study was resumed).
        self.invocations = [int(r[2]) for r in rows if r[0] == "invocation"]
        machine = root / "machine.txt"
        self.machine = machine.read_text().strip().splitlines() if machine.exists() else []
        self.evals = {p.stem: json.loads(p.read_text()) for p in sorted((root / "eval").glob("*.json"))}
        self.sweeps = {
            name: read_json(root / "sbp" / name / "results.json") for name in ("armd", "armd-sbp", "ar", "mdlm")
        }
        manifest = read_json(root / "shards" / "train" / "manifest.json") or {}
        val_manifest = read_json(root / "shards" / "val" / "manifest.json") or {}
        self.train_tokens = manifest.get("totals", {}).get("tokens")
        self.val_tokens = val_manifest.get("totals", {}).get("tokens")

    def arch(self, run: str) -> str:
        return "armd" if run.startswith("armd") else run

    def flops_at(self, run: str, step: int) -> float:
        """Cumulative training FLOPs of `run` after `step` steps (pretraining included for the fine-tune)."""
        base = self.settings["ARMD_STEPS"] if run == "armd-sbp" else 0
        return (base + step) * self.tokens_per_step * self.flops_per_token[self.arch(run)]

    def val_curve(self, run: str) -> list[tuple[int, str, float]]:
        out = []
        for m in self.metrics[run]:
            for key in ("val/nll", "val/elbo"):
                if key in m:
                    out.append((m["step"], key, m[key]))
        return out

    def step_time(self, run: str) -> float | None:
        times = [m["step_time_s"] for m in self.metrics[run] if "step_time_s" in m]
        return statistics.median(times) if times else None

    def stage_seconds(self, name: str) -> int | None:
        for row in self.timings:
            if row[0] == name:
                return int(row[2])
        return None


# -- tables --------------------------------------------------------------------------------------------


def setup_table(s: Study) -> str:
    rows = []
    steps = {
        "ar": s.settings["AR_STEPS"],
        "armd": s.settings["ARMD_STEPS"],
        "mdlm": s.settings["AR_STEPS"],
        "armd-sbp": s.settings["SBP_STEPS"],
    }
    labels = {"ar": "AR (l2r)", "armd": "ARMD (progressive)", "mdlm": "MDLM", "armd-sbp": "ARMD SBP fine-tune"}
    stage = {"ar": "train_ar", "armd": "train_armd", "mdlm": "train_mdlm", "armd-sbp": "finetune_sbp"}
    for run in ("ar", "armd", "mdlm", "armd-sbp"):
        arch = s.arch(run)
        n = steps[run]
        st = s.step_time(run)
        rows.append(
            [
                labels[run],
                f"{s.params[arch] / 1e6:.2f}M",
                f"{s.flops_per_token[arch] / 1e6:.1f}",
                f"{s.flops_per_token[arch] / s.flops_per_token['ar']:.3f}",
                str(n),
                f"{n * s.tokens_per_step / 1e6:.2f}M",
                f"{n * s.tokens_per_step * s.flops_per_token[arch] / 1e12:.1f}",
                fmt(st, 2),
                fmt(s.tokens_per_step / st, 0) if st else "–",
                str(s.stage_seconds(stage[run]) or "–"),
            ]
        )
    return table(
        [
            "run",
            "params",
            "train MFLOP/token",
            "vs AR",
            "steps",
            "tokens",
            "train TFLOP",
            "median step (s)",
            "tokens/s",
            "wall (s)",
        ],
        rows,
    )


def likelihood_table(s: Study, set_name: str) -> tuple[str, list[dict]]:
    rows, records = [], []
    for label, prefix, run, which in MODELS:
        cells = {}
        for kind, _ in COLUMNS:
            doc = s.evals.get(f"{prefix}_{set_name}_{kind}")
            if doc:
                cells[kind] = doc
        if not cells:
            continue
        any_doc = next(iter(cells.values()))
        step = any_doc.get("step")
        row = [label, which, str(step), f"{s.flops_at(run, step or 0) / 1e12:.1f}"]
        record = {"model": label, "checkpoint": which, "step": step, "set": set_name}
        for kind, _ in COLUMNS:
            doc = cells.get(kind)
            if doc is None:
                row.append("–")
                continue
            nll, bpb = doc["nll_per_token"], doc.get("bits_per_byte")
            spread = doc.get("nll_std")
            text = fmt(nll)
            if kind in ("random", "continuous") and spread:
                text += f" ± {spread:.3f}"
            row.append(f"{text} ({fmt(bpb)})")
            record[kind] = {
                "nll_per_token": nll,
                "bits_per_byte": bpb,
                "nll_std": spread,
                "likelihood": doc["likelihood"],
                "tokens": doc["tokens"],
            }
        rows.append(row)
        records.append(record)
    header = ["model", "checkpoint", "step", "train TFLOP"] + [c for _, c in COLUMNS]
    return table(header, rows), records


def curve_table(s: Study) -> str:
    by_step: dict[int, dict[str, float]] = {}
    for run in ("ar", "armd", "mdlm"):
        for step, _key, value in s.val_curve(run):
            by_step.setdefault(step, {})[run] = value
    rows = []
    for step in sorted(by_step):
        v = by_step[step]
        rows.append(
            [
                str(step),
                f"{step * s.tokens_per_step / 1e6:.2f}M",
                fmt(v.get("ar")),
                fmt(v.get("armd")),
                fmt(v.get("mdlm")),
                f"{s.flops_at('ar', step) / 1e12:.1f}",
                f"{s.flops_at('armd', step) / 1e12:.1f}",
            ]
        )
    return table(
        [
            "step",
            "tokens",
            "AR val/nll (exact l2r)",
            "ARMD val/nll (exact l2r)",
            "MDLM val/elbo (bound)",
            "AR/MDLM TFLOP",
            "ARMD TFLOP",
        ],
        rows,
    )


def sbp_finetune_curve(s: Study) -> str:
    rows = [[str(step), fmt(value)] for step, key, value in s.val_curve("armd-sbp")]
    return table(["fine-tune step", "ARMD+SBP val/nll (exact l2r)"], rows)


def generation_rows(s: Study) -> list[dict]:
    out = []
    labels = {"armd": "ARMD (no SBP fine-tune)", "armd-sbp": "ARMD + SBP fine-tune", "ar": "AR (the judge itself)"}
    for name in ("ar", "armd", "armd-sbp"):
        doc = s.sweeps.get(name)
        for r in (doc or {}).get("results", []):
            out.append(
                {
                    "model": labels[name],
                    "setting": f"S={r['streams']}",
                    "forward_calls": r["forward_calls"],
                    "tokens_per_s": r["tokens_per_s"],
                    "gen_ppl": r["gen_ppl"],
                    "entropy": r["entropy"],
                    "seconds": r["seconds"],
                    "name": name,
                }
            )
    doc = s.sweeps.get("mdlm")
    for r in (doc or {}).get("results", []):
        out.append(
            {
                "model": "MDLM (ancestral)",
                "setting": f"T={r['steps']}",
                "forward_calls": r["forward_calls"],
                "tokens_per_s": r["tokens_per_s"],
                "gen_ppl": r["gen_ppl"],
                "entropy": r["entropy"],
                "seconds": r["seconds"],
                "name": "mdlm",
            }
        )
    return out


def generation_table(rows: list[dict]) -> str:
    return table(
        ["model", "S / T", "forward calls", "decode s", "tokens/s", "gen PPL (AR judge)", "entropy (nats)"],
        [
            [
                r["model"],
                r["setting"],
                str(r["forward_calls"]),
                fmt(r["seconds"], 2),
                fmt(r["tokens_per_s"], 0),
                fmt(r["gen_ppl"], 1),
                fmt(r["entropy"], 3),
            ]
            for r in rows
        ],
    )


def timings_table(s: Study) -> str:
    rows = [[r[0], r[1], r[2]] for r in s.timings]
    rows.append([f"total ({len(s.invocations)} invocation(s) of repro.sh)", "–", str(sum(s.invocations))])
    return table(["stage", "lane", "wall (s)"], rows)


# -- plots ---------------------------------------------------------------------------------------------


def plot_curves(s: Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {
        "ar": ("AR: val NLL (exact, l2r)", "tab:blue", "-"),
        "armd": ("ARMD: val NLL (exact, l2r)", "tab:red", "-"),
        "mdlm": ("MDLM: val ELBO (bound)", "tab:green", "--"),
        "armd-sbp": ("ARMD + SBP fine-tune: val NLL (exact, l2r)", "tab:purple", ":"),
    }
    for run, (label, color, ls) in styles.items():
        curve = s.val_curve(run)
        if not curve:
            continue
        offset = s.settings["ARMD_STEPS"] if run == "armd-sbp" else 0
        steps = [c[0] + offset for c in curve]
        vals = [c[2] for c in curve]
        axes[0].plot(steps, vals, ls, color=color, marker="o", ms=3, label=label)
        axes[1].plot(
            [s.flops_at(run, c[0]) / 1e12 for c in curve], vals, ls, color=color, marker="o", ms=3, label=label
        )
    for ax, xlabel in zip(axes, ("optimizer steps", "cumulative training TFLOP (flops.py)"), strict=True):
        ax.set(xlabel=xlabel, ylabel="nats / token")
        ax.grid(alpha=0.3)
    axes[0].axvline(s.settings["ARMD_STEPS"], color="grey", lw=0.8)
    axes[0].set_title("equal steps (grey line: ARMD's budget)")
    axes[1].set_title("equal training FLOPs")
    lo = min(c[2] for run in ("ar", "armd", "mdlm") for c in s.val_curve(run))
    for ax in axes:
        ax.set_ylim(lo - 0.2, lo + 2.5)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Validation on held-out prose ({s.val_windows} windows of {s.seq_len} tokens; exact NLL solid, bound dashed)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_generation(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"armd": "tab:red", "armd-sbp": "tab:purple", "mdlm": "tab:green", "ar": "tab:blue"}
    for name in ("armd", "armd-sbp", "mdlm", "ar"):
        sel = sorted((r for r in rows if r["name"] == name), key=lambda r: r["forward_calls"])
        if not sel:
            continue
        x = [r["forward_calls"] for r in sel]
        label = sel[0]["model"]
        axes[0].plot(x, [r["gen_ppl"] for r in sel], "o-", color=colors[name], label=label)
        axes[1].plot(x, [r["tokens_per_s"] for r in sel], "o-", color=colors[name], label=label)
        for r in sel:
            axes[0].annotate(
                r["setting"], (r["forward_calls"], r["gen_ppl"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    axes[0].set(
        xlabel="forward calls per sample batch",
        ylabel="gen PPL under the study's AR",
        yscale="log",
        title="quality (lower is better; read with entropy)",
    )
    axes[1].set(
        xlabel="forward calls per sample batch",
        ylabel="generated tokens/s (1 CPU thread)",
        yscale="log",
        title="decoding speed (KV cache for ARMD/AR, none for MDLM)",
    )
    calls = sorted({r["forward_calls"] for r in rows})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(calls, [str(c) for c in calls])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repro-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    s = Study(args.repro_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    gen_rows = generation_rows(s)
    likelihood = {}
    parts = [
        "# Reproduction study: generated tables",
        "",
        "Written by `bench/repro_report.py` from one run of `bench/repro.sh`; docs/REPRODUCTION.md explains them.",
        f"Settings: {', '.join(f'{k}={v}' for k, v in s.settings.items())}. Training data "
        f"{s.train_tokens:,} tokens, validation shards {s.val_tokens:,} tokens; batch {s.batch} x {s.seq_len}.",
        "Machine: " + "; ".join(s.machine) + ".",
        "",
        "## Setup and cost",
        "",
        setup_table(s),
        "",
    ]
    for set_name, title in SETS.items():
        text, records = likelihood_table(s, set_name)
        likelihood[set_name] = records
        tokens = next((r[k]["tokens"] for r in records for k in r if isinstance(r[k], dict)), None)
        parts += [
            f"## Likelihoods: {title}",
            "",
            f"nats/token (bits/byte in parentheses), {tokens} tokens. `±` is the spread between orders or "
            "noise draws (sample std).",
            "",
            text,
            "",
        ]
    parts += [
        f"## Validation curves (during training, {s.val_windows} windows of {s.seq_len} tokens)",
        "",
        curve_table(s),
        "",
        "## SBP fine-tuning: left-to-right validation NLL",
        "",
        sbp_finetune_curve(s),
        "",
        f"## Generation: {s.sweeps['armd']['num_samples'] if s.sweeps.get('armd') else '?'} unconditional samples of "
        f"{s.sweeps['armd']['length'] if s.sweeps.get('armd') else '?'} tokens per row",
        "",
        generation_table(gen_rows),
        "",
        "## Stage timings",
        "",
        timings_table(s),
        "",
    ]
    (args.out / "results.md").write_text("\n".join(parts))
    plot_curves(s, args.out / "curves.png")
    plot_generation(gen_rows, args.out / "generation.png")
    summary = {
        "settings": s.settings,
        "flops_per_token": s.flops_per_token,
        "params": s.params,
        "train_tokens": s.train_tokens,
        "val_tokens": s.val_tokens,
        "median_step_time_s": {run: s.step_time(run) for run in s.metrics},
        "val_curves": {run: s.val_curve(run) for run in s.metrics},
        "likelihood": likelihood,
        "generation": gen_rows,
        "timings": {r[0]: int(r[2]) for r in s.timings} | {"total": sum(s.invocations)},
        "invocations_s": s.invocations,
        "machine": s.machine,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}/results.md, curves.png, generation.png, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
