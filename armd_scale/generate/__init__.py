"""KV-cached decoding and sampling schedules (DESIGN 2.6): sequential, SBP, infilling."""

from .cache import ARDecoder, ARMDDecoder, make_decoder
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
    "SampleResult",
    "generate",
    "infill_plan",
    "make_decoder",
    "order_plan",
    "sample_infill",
    "sample_logits",
    "sample_reference",
    "sample_sbp",
    "sample_sequential",
    "sbp_plan",
    "sequential_plan",
]
