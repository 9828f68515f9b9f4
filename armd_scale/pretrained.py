"""`from armd_scale.pretrained import load_pretrained`: the public entry point for loading a trained
model without DeepSpeed. The implementation is `armd_scale/checkpoints/pretrained.py`; nothing inside
the package imports this module (it sits above every layer, like cli.py)."""

from .checkpoints.pretrained import Pretrained, load_pretrained

__all__ = ["Pretrained", "load_pretrained"]
