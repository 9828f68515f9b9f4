"""Checkpoint formats: the one home of everything that knows how checkpoints are laid out on disk.

Below `train/` (its Checkpointer saves and resumes through these modules) and above `model/`:

- `layout`       names (step_N, meta.json, COMPLETE, latest, universal/, export files), meta.json
                 reading, completion markers, the model-shape fields a resume must keep.
- `safe_load`    the only place pickle-based files are opened (restricted unpickler), and the guard
                 that forces it on DeepSpeed's own loads.
- `source`       the one resolver: run dir / checkpoint folder / universal folder / export -> `Source`.
- `weights`      full fp32 weights of any source without an engine, and the tensor-parallel merge.
- `universal`    DeepSpeed's universal form: what can be resharded, conversion, reading.
- `model_io`     models from a saved config and a state dict; tied-weight handling.
- `pretrained`   `load_pretrained` for evaluation and generation.
- tools: `to_universal`, `export` (with `validate`, `report`, `atomic`), `summary` and `diff` (what
  `armd inspect` prints).

The on-disk formats are described in docs/CHECKPOINTS.md.
"""
