"""Any checkpoint -> an export directory that loads without DeepSpeed.

    OUT/
      model.safetensors   full weights (fp32 by default), each tied tensor stored once
      config.json         {"format", "config" (resolved run config), "step", "tokenizer_sha256", "dtype",
                           "tied", "parameters", provenance (topology, loader, trainer, wandb run id,
                           source), "conversion" (the validation record) and "files" (size and
                           SHA-256 of every other file, verified on load)}
      tokenizer/          tokenizer.model + tokenizer.json + tokenizer.vocab (SentencePiece) or
                          tokenizer.json + armd_tokenizer.json (Hugging Face), as trained

safetensors holds raw tensors and a JSON header, nothing executable, so an export is safe to load
from anywhere. `load_pretrained(OUT)` (checkpoints/pretrained.py) reads it; the validation below goes
through that same function, so a passing conversion proves the loader users will call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_dir, check_out, refuse_overlap
from .integrity import digests, recorded_files
from .layout import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_TOKENIZER, EXPORT_WEIGHTS, FILES
from .model_io import config_of, parameter_count, tied_aliases, without_aliases
from .pretrained import load_pretrained
from .report import ConversionError, ConversionReport, Progress
from .source import open_source, reads_newest
from .validate import fixed_batch, logits_of, max_abs_diff, model_from_state
from .weights import full_state
from .weights_file import write_weights

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REFERENCE = {
    "deepspeed": "the source's full fp32 weights (weights.full_state)",
    "universal": "the source's fp32 weights (universal.read_universal)",
}


@reads_newest
def export(
    path: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp32",
    tokenizer: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ConversionReport:
    """Write the export directory `out` for checkpoint `path`, validated against the source weights."""
    progress = progress or Progress()
    out = check_out(out, overwrite=overwrite)
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    source = open_source(path)
    refuse_overlap(source.folder, out)
    if source.kind == "export":
        raise ConversionError(f"{source.folder} is already an export directory")
    cfg = config_of(source.config, str(source.meta_file))
    progress(f"reading the full weights of {source.folder} ({source.kind}, step {source.step})")
    state = full_state(source)
    reference = model_from_state(cfg, state, str(source.folder))
    batch = fixed_batch(cfg)
    expected = logits_of(reference, cfg, batch)
    aliases = tied_aliases(reference)
    weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in without_aliases(state, aliases).items()}
    notes: list[str] = []

    with atomic_dir(out, overwrite=overwrite) as tmp:
        size = sum(t.numel() * t.element_size() for t in weights.values())
        progress(f"writing {EXPORT_WEIGHTS}: {len(weights)} tensors, {size / 2**20:.1f} MiB, {dtype}")
        write_weights(weights, tmp / EXPORT_WEIGHTS, metadata={"armd_scale": EXPORT_FORMAT})
        has_tokenizer = tokenizer and copy_tokenizer(source.meta, tmp / EXPORT_TOKENIZER, notes, progress)
        if not tokenizer:
            notes.append("tokenizer left out (--no-tokenizer)")
        if source.averaged:
            notes.append("the EMA of the weights (ema.safetensors; --raw-weights exports model.safetensors)")
        if dtype != "fp32":
            notes.append(f"weights rounded to {dtype}: the logit difference is that rounding")
        config = {
            "format": EXPORT_FORMAT,
            "config": source.config,
            "step": source.step,
            "tokenizer_sha256": source.meta.get("tokenizer_sha256"),
            "tokenizer": EXPORT_TOKENIZER if has_tokenizer else None,
            "dtype": dtype,
            "tied": aliases,
            "parameters": parameter_count(reference),
            "topology": source.topology,
            "loader": source.meta.get("loader"),
            "trainer": source.meta.get("trainer"),
            "wandb_run_id": source.meta.get("wandb_run_id"),
            "saved_at": source.meta.get("saved_at"),
            "source": {"path": str(source.folder), "kind": source.kind},
            "weights": "ema" if source.averaged else "raw",  # the EMA of the weights unless --raw-weights
        }
        (tmp / EXPORT_CONFIG).write_text(json.dumps(config, indent=1))

        progress("validating: load_pretrained on the new directory, both models on the fixed batch")
        loaded = load_pretrained(tmp)
        diff = max_abs_diff(expected, logits_of(loaded.model, loaded.config, batch))
        report = ConversionReport.of(
            "export",
            source,
            out,
            progress,
            reference=REFERENCE[source.kind],
            batch=batch.to_dict(),
            max_abs_logit_diff=diff,
            exact_required=dtype == "fp32",
            dtype=dtype,
            parameters=parameter_count(reference),
            notes=notes,
        )
        report.require_exact("the fp32 export")
        config["conversion"] = report.to_dict()
        config[FILES] = digests(tmp, [n for n in recorded_files(tmp) if n != EXPORT_CONFIG], sync=True)
        (tmp / EXPORT_CONFIG).write_text(json.dumps(config, indent=1))
    progress(f"done: {out}")
    return report


def copy_tokenizer(meta: dict[str, Any], dest: Path, notes: list[str], progress: Progress) -> bool:
    """Copy the run's tokenizer files (SentencePiece model + record, or a tokenizer.json, also one
    found by hub name) after checking it is the one the checkpoint was trained with; a tokenizer that
    changed since would silently garble every output."""
    from ..data.errors import DataError
    from ..data.tokenizers.ref import TokenizerRef

    ref = TokenizerRef.from_meta(meta)  # the typed reference, or the loose keys of older checkpoints
    src = ref.location if ref is not None else meta.get("tokenizer_dir")
    if not src:
        notes.append("the checkpoint names no tokenizer directory; the export has none (pass token ids)")
        return False
    try:
        # verified on open: a tokenizer that changed since training is refused, naming file and checksum
        from ..data.tokenizers.load import load_tokenizer

        tok = ref.open() if ref is not None else load_tokenizer(src)
    except DataError as e:
        raise ConversionError(
            f"cannot copy the run's tokenizer: {e} (pass --no-tokenizer to export without it)"
        ) from None
    if not tok.has_text:
        notes.append(f"{src} is a {tok.kind} token source without a text tokenizer; none exported")
        return False
    progress(f"copying tokenizer {src} (sha256 {tok.sha256[:12]})")
    dest.mkdir()
    for name, data in tok.files().items():
        (dest / name).write_bytes(data)
    return True
