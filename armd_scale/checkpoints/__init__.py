"""Checkpoint tools: conversion, export and inspection, outside of training.

- `source`      opens any checkpoint path (run dir, DeepSpeed folder, universal folder, export dir)
                and reads its full fp32 weights without a DeepSpeed engine.
- `to_universal` DeepSpeed folder -> a folder holding only DeepSpeed's universal form (resumable).
- `export`      any checkpoint -> `model.safetensors` + `config.json` + `tokenizer/` (no DeepSpeed needed).
- `validate`    every conversion runs source and result on one fixed batch and reports the logit gap.
- `summary`, `diff`  what `armd inspect` prints.

Everything here reads pickle-based files with torch's restricted unpickler only (train/safe_load.py).
The on-disk formats are described in docs/CHECKPOINTS.md.
"""
