"""armd_scale: pretraining stack for Auto-Regressive Masked Diffusion (ARMD) language models."""

__version__ = "0.1.0"
