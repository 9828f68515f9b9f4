"""What `armd inspect PATH` reports about one checkpoint, read from metadata and file headers.

The parameter count comes from building the saved config's model on the meta device (shapes, no
memory), so inspecting a large checkpoint costs seconds; every pickle-based file is still opened
with the restricted unpickler (memory-mapped), and every recorded checksum is compared (a `--to hf`
folder's too), so inspect doubles as a safety and integrity check of the whole folder (open_source
scope "folder": DeepSpeed's files included, which the readers of weights never open). It only reads.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from .hf_mapping import verify_hf_folder
from .layout import CHECKPOINTS, FILES, is_complete, step_folders
from .model_io import build, config_of, parameter_count
from .safe_load import PICKLE_SUFFIXES
from .source import Source, open_source, reads_newest


@reads_newest
def summarize(path: str | Path) -> dict[str, Any]:
    source = open_source(path, scope="folder")
    if source.kind == "hf":  # every file its armd_scale.json lists, before anything else is reported
        verify_hf_folder(source.folder)
    cfg = source.config
    model, data, train = cfg.get("model", {}), cfg.get("data", {}), cfg.get("train", {})
    topology = source.topology or {}
    loader = source.meta.get("loader") or {}
    files = _files(source.folder)
    info: dict[str, Any] = {
        "path": str(path),
        "kind": source.kind,
        "folder": str(source.folder),
        "step": source.step,
        "config": {
            "arch": model.get("arch"),
            "n_layers": model.get("n_layers"),
            "d_model": model.get("d_model"),
            "n_heads": model.get("n_heads"),
            "seq_len": data.get("seq_len"),
            "max_seq_len": model.get("max_seq_len"),
            "vocab_size": model.get("vocab_size"),
            "tie_embeddings": model.get("tie_embeddings"),
            "order": (train.get("order") or {}).get("kind"),
        },
        "parameters": parameter_count(build(config_of(cfg, str(source.meta_file)), device="meta")),
        "tokenizer_sha256": source.meta.get("tokenizer_sha256"),
        "tokenizer_dir": source.tokenizer_dir,
        "topology": {k: topology.get(k) for k in ("world_size", "dp", "tp", "zero_stage", "precision")}
        | ({"layout": topology["layout"]} if "layout" in topology else {}),
        "loader": {k: loader.get(k) for k in ("epoch", "cursor", "num_samples", "global_batch_size")},
        "wandb_run_id": source.meta.get("wandb_run_id"),
        "saved_at": _iso(source.meta.get("saved_at")),
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
        "safety": _safety(source, files),
        "integrity": _integrity(source),
    }
    if source.weights is not None:
        info["weights"] = source.weights.to_dict()
        info["weights_ema"] = source.averaged  # the EMA of the weights (train.ema_decay), what readers load
    if source.kind == "export":
        info["dtype"] = source.meta.get("dtype")
    if "conversion" in source.meta:
        conv = source.meta["conversion"]
        info["conversion"] = {k: conv.get(k) for k in ("to", "source", "max_abs_logit_diff", "reference")}
    if source.run_dir is not None:
        info["run_dir"] = str(source.run_dir)
        info["checkpoints"] = [
            {"tag": p.name, "complete": is_complete(p)} for p in step_folders(source.run_dir / CHECKPOINTS)
        ]
    return info


def _files(folder: Path) -> list[dict[str, Any]]:
    """Every file of the checkpoint; hidden entries (staging left by an interrupted write) are not part of it."""
    return [
        {"path": str(p.relative_to(folder)), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def _safety(source: Source, files: list[dict[str, Any]]) -> str:
    pickled = [f for f in files if Path(f["path"]).suffix in PICKLE_SUFFIXES]
    if source.kind == "export" and not pickled:
        return "safetensors and JSON only (nothing executable)"
    if source.kind == "hf" and not pickled:
        code = [f["path"] for f in files if f["path"].endswith(".py")]
        if not code:
            return "safetensors and JSON only (nothing executable)"
        return (
            "safetensors and JSON, plus the modelling code transformers runs with trust_remote_code=True "
            f"({', '.join(code)}; armd_scale never runs it)"
        )
    # open_source already loaded every one of them with weights_only=True
    return f"all {len(pickled)} pickle-based files load with weights_only=True"


def _integrity(source: Source) -> str:
    recorded = source.meta.get(FILES)
    if not recorded:
        return "no checksums recorded (saved before armd_scale recorded them)"
    # open_source already compared every one of them
    return f"all {len(recorded)} recorded files match their size and SHA-256"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).isoformat(timespec="seconds")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_summary(info: dict[str, Any]) -> str:
    c, t, ld = info["config"], info["topology"], info["loader"]
    rows: list[tuple[str, Any]] = [("path", info["path"])]
    if "checkpoints" in info:
        tags = [f"{x['tag']}{'' if x['complete'] else ' (incomplete)'}" for x in info["checkpoints"]]
        rows.append(("checkpoints", ", ".join(tags)))
    model = (
        f"{c['arch']}, {c['n_layers']} layers, d_model {c['d_model']}, {c['n_heads']} heads, "
        f"seq len {c['seq_len']} (max {c['max_seq_len']}), vocab {c['vocab_size']}"
        f"{', tied embeddings' if c['tie_embeddings'] else ''}"
    )
    topology = (
        f"world size {t['world_size']} (dp {t['dp']} x tp {t['tp']}), ZeRO-{t['zero_stage']}, "
        f"{t['precision']}{', universal layout' if t.get('layout') else ''}"
    )
    loader = (
        f"epoch {ld['epoch']}, cursor {ld['cursor']} of {ld['num_samples']} samples "
        f"(global batch {ld['global_batch_size']})"
    )
    rows += [
        ("kind", f"{info['kind']}: {info['folder']}"),
        ("step", info["step"]),
        ("model", model),
        ("order", c["order"]),
        ("parameters", f"{info['parameters']:,}"),
        ("tokenizer", f"sha256 {info['tokenizer_sha256']} ({info['tokenizer_dir'] or 'no directory'})"),
        ("topology", topology),
        ("loader", loader),
        ("wandb run id", info["wandb_run_id"] or "-"),
        ("saved at", info["saved_at"] or "-"),
    ]
    if "weights" in info:
        w = info["weights"]
        ema = info.get("weights_ema")
        what = "the EMA of the weights, what readers load unless --raw-weights" if ema else "what readers load"
        rows.append(("weights", f"{w['file']}: {w['dtype']}, {w['tensors']} tensors ({what})"))
    if "dtype" in info:
        rows.append(("dtype", info["dtype"]))
    if "conversion" in info:
        conv = info["conversion"]
        rows.append(
            ("conversion", f"to {conv['to']} from {conv['source']}: max abs logit diff {conv['max_abs_logit_diff']:g}")
        )
    rows.append(("safety", info["safety"]))
    rows.append(("integrity", info["integrity"]))
    rows.append(("files", f"{len(info['files'])} files, {_size(info['total_bytes'])}"))
    return "\n".join([f"{k:<14}{v}" for k, v in rows] + _file_lines(info["files"]))


def _file_lines(files: list[dict[str, Any]]) -> list[str]:
    """Top-level files one per line; subfolders (universal/, tokenizer/) as one line each (--json lists all)."""
    entries: dict[str, list[int]] = {}
    for f in files:
        top, _, rest = f["path"].partition("/")
        entries.setdefault(top + ("/" if rest else ""), []).append(f["bytes"])
    return [
        f"  {_size(sum(sizes)):>10}  {name}" + (f" ({len(sizes)} files)" if name.endswith("/") else "")
        for name, sizes in entries.items()
    ]
