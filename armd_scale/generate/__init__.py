"""Decoding: KV-cached sampling schedules (sequential, SBP, infilling; docs/GENERATION.md) and the
mdlm baseline's ancestral sampler. `sample(model, SampleRequest(...))` picks the one a model declares."""

from .cache import ARDecoder, ARMDDecoder, make_decoder
from .entry import SampleRequest, sample
from .mdlm import ancestral_sample, sample_mdlm
from .reference import FullForwardDecoder
from .sampler import (
    DecodePlan,
    SampleResult,
    generate,
    infill_plan,
    order_plan,
    sample_infill,
    sample_logits,
    sample_reference,
    sample_sbp,
    sample_sequential,
    sbp_plan,
    sequential_plan,
)

__all__ = [
    "ARDecoder",
    "ARMDDecoder",
    "DecodePlan",
    "FullForwardDecoder",
    "SampleRequest",
    "SampleResult",
    "ancestral_sample",
    "generate",
    "infill_plan",
    "make_decoder",
    "order_plan",
    "sample",
    "sample_infill",
    "sample_logits",
    "sample_mdlm",
    "sample_reference",
    "sample_sbp",
    "sample_sequential",
    "sbp_plan",
    "sequential_plan",
]
