"""Evaluation (docs/EVALUATION.md): exact and bound likelihoods, bits per byte, and the SBP sweep.

Submodules: `likelihood` (l2r / random-order NLL, diffusion ELBO), `data` (evaluation windows from
shards or text), `text` (token <-> text, bytes), `genppl` (judges, entropy), `sbp` (the sweep),
`ppl` (the `armd eval ppl` function), `zeroshot` and `zeroshot_data` (the SEDD/MDLM/BD3-LM
zero-shot perplexity suite), `harness` (the lm-evaluation-harness model; imports lm_eval), `schema` (the JSON
the commands write).
"""

from .likelihood import LIKELIHOOD_KINDS, LikelihoodResult, draw_orders, evaluate_likelihood, score_orders, window_nll
from .schema import SchemaError, validate
from .text import bits_per_byte, codec_for, count_bytes

__all__ = [
    "LIKELIHOOD_KINDS",
    "LikelihoodResult",
    "SchemaError",
    "bits_per_byte",
    "codec_for",
    "count_bytes",
    "draw_orders",
    "evaluate_likelihood",
    "score_orders",
    "validate",
    "window_nll",
]
