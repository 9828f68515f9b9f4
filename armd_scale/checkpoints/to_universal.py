"""DeepSpeed checkpoint folder -> a folder holding only DeepSpeed's universal form.

    OUT/
      meta.json        the source's meta.json, with topology.layout = "universal" and a "conversion" record
      COMPLETE         completion marker, as in a training checkpoint
      model.safetensors  the full fp32 weights, as every checkpoint holds them (weights_file.py)
      universal/
        latest_universal   names the tag
        step_N/            DeepSpeed's universal layout: mp_rank_00_model_states.pt and
                           zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt

OUT is a complete training checkpoint: copied to RUN_DIR/checkpoints/step_N (the folder name must be
the tag) it is resumed by `armd train` on any data-parallel size and any TP degree DeepSpeed can
reshard to (see universal.py), always through `load_universal`, with the step, data cursor,
RNG and wandb run id of the source. The optimizer state travels with the weights.

ZeRO-0 checkpoints have no optimizer partitions for DeepSpeed to convert; they already load directly
on another data-parallel size, so this refuses them and points to `--to export` for the weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .atomic import atomic_dir, check_out, refuse_overlap
from .integrity import digests, recorded_files
from .layout import FILES, UNIVERSAL, WEIGHTS, mark_complete, tag_for
from .model_io import config_of, parameter_count, tied_aliases, without_aliases
from .report import ConversionError, ConversionReport, Progress
from .source import open_source, reads_newest
from .universal import read_universal, write_universal
from .validate import fixed_batch, logits_of, max_abs_diff, model_from_state
from .weights import full_state, saved_module_state
from .weights_file import EMA_WEIGHTS_KEY, read_record, write_checkpoint_weights


@reads_newest
def to_universal(
    path: str | Path, out: str | Path, *, overwrite: bool = False, progress: Progress | None = None
) -> ConversionReport:
    """Write the universal folder `out` for DeepSpeed checkpoint `path`, validated against the source."""
    progress = progress or Progress()
    out = check_out(out, overwrite=overwrite)
    # DeepSpeed's files are read: every one is checked; the raw weights are what they hold
    source = open_source(path, scope="folder", weights="raw")
    refuse_overlap(source.folder, out)
    if source.kind != "deepspeed":
        what = "already universal" if source.kind == "universal" else "an export"
        raise ConversionError(
            f"{source.folder} is {what}; --to universal takes a DeepSpeed checkpoint or run directory"
        )
    topology = source.topology or {}
    if topology.get("zero_stage") == 0:
        raise ConversionError(
            f"{source.folder} was trained with ZeRO-0: it has no optimizer partitions to convert, and it already "
            "resumes directly on another data-parallel size (same TP degree). Use --to export for the weights"
        )
    if source.step is None:
        raise ConversionError(f"{source.meta_file} has no 'step'")
    cfg = config_of(source.config, str(source.meta_file))
    tag = tag_for(source.step)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        progress(
            f"converting {source.folder} (ZeRO-{topology['zero_stage']}, world size {topology['world_size']}, "
            f"TP {topology['tp']}) with DeepSpeed's ds_to_universal"
        )
        tag_dir = tmp / UNIVERSAL / tag
        write_universal(source.folder, tag_dir)

        progress("validating: universal weights vs the source's, both models on the fixed batch")
        reference_state = saved_module_state(source)
        reference = "the module weights DeepSpeed saved (mp_rank_*_model_states.pt)"
        if reference_state is None:  # ZeRO-3 saves no full module weights
            reference_state = full_state(source)
            reference = (
                "the weights the save wrote (model.safetensors)"
                if source.weights is not None
                else "the source's universal form, converted apart"
            )
        batch = fixed_batch(cfg)
        expected_model = model_from_state(cfg, reference_state, f"{source.folder} ({reference})")
        converted = read_universal(tag_dir)
        result_model = model_from_state(cfg, converted, str(tag_dir))
        diff = max_abs_diff(logits_of(expected_model, cfg, batch), logits_of(result_model, cfg, batch))
        precision = topology.get("precision", "fp32")
        notes = (
            []
            if precision == "fp32"
            else [f"trained in {precision}: the saved module weights are rounded copies of the fp32 master weights"]
        )
        report = ConversionReport.of(
            "universal",
            source,
            out,
            progress,
            reference=reference,
            batch=batch.to_dict(),
            max_abs_logit_diff=diff,
            exact_required=precision == "fp32",
            parameters=parameter_count(result_model),
            notes=notes,
        )
        report.require_exact("the universal form")

        aliases = tied_aliases(result_model)
        record, _ = write_checkpoint_weights(tmp, without_aliases(converted, aliases), tied=aliases)
        ema = read_record(source.meta, source.meta_file, key=EMA_WEIGHTS_KEY)
        if ema is not None:  # the EMA of the weights travels with them: a resume from this folder continues it
            shutil.copyfile(source.folder / ema.file, tmp / ema.file)
        meta = {
            **source.meta,
            "topology": {**topology, "layout": UNIVERSAL},
            "converted_from": str(source.folder),
            "conversion": report.to_dict(),
            WEIGHTS: record.to_dict(),
            FILES: digests(tmp, recorded_files(tmp), sync=True),  # the new folder's own files, not the source's
        }
        mark_complete(tmp, meta)
    progress(f"done: {out}; to resume from it, copy it to RUN_DIR/checkpoints/{tag}")
    return report
