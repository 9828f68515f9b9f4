"""The transformers glue of every `armd convert --to hf` custom-code folder (configuration_armd.py,
modeling_armd.py). They import armd_scale's own model modules, and the exporter ships them together
with every module they need, following their imports (checkpoints/hf_code_files.py), each rewritten
only in its package-relative imports, so the folder runs where armd_scale is not installed."""
