"""The modelling code written into every `armd convert --to hf` folder (configuration_armd.py,
modeling_armd.py). They import torch and transformers only, never armd_scale, because they run
where armd_scale is not installed; hf_export.py copies them verbatim."""
