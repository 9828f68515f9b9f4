"""The JSON schemas: the validator rejects what it should, and docs/EVALUATION.md documents every field.

Real command output is validated in test_likelihood.py (ppl, all kinds), test_sbp.py (sbp),
test_zeroshot.py (zeroshot) and tests/generate/test_cli.py (generate).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from armd_scale.eval.schema import (
    GENERATE,
    PPL_BY_KIND,
    PPL_COMMON,
    SAMPLE,
    SBP,
    SBP_ROW,
    ZEROSHOT,
    ZEROSHOT_ROW,
    SchemaError,
    validate,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "EVALUATION.md"

GOOD_PPL = {
    "kind": "random",
    "likelihood": "exact",
    "tokens": 64,
    "nll_per_token": 2.0,
    "ppl": 7.389,
    "bits_per_byte": None,
    "bytes": None,
    "windows": 2,
    "seq_len": 32,
    "checkpoint": "/r/checkpoints/step_1",
    "step": 1,
    "weights": "ema",
    "dtype": "float32",
    "seed": 0,
    "data": [{"path": "/d", "kind": "shards", "windows": 2}],
    "orders": 2,
    "nll_std": 0.1,
    "nll_min": 1.9,
    "nll_max": 2.1,
    "nll_per_order": [1.9, 2.1],
}


def test_a_valid_document_passes_and_extra_keys_are_allowed():
    validate({**GOOD_PPL, "something_new": 1}, "ppl")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("nll_std"), r"\$\.nll_std: missing"),
        (lambda d: d.update(tokens="64"), r"\$\.tokens: expected int"),
        (lambda d: d.update(tokens=True), r"\$\.tokens: expected int"),
        (lambda d: d.update(likelihood="elbo"), r"kind random is an exact likelihood"),
        (lambda d: d.update(kind="diffusion", likelihood="elbo"), r"\$\.steps: missing"),
        (lambda d: d.update(kind="bpc"), r"'bpc' is not one of"),
        (lambda d: d.update(nll_per_order=[1.0, "x"]), r"nll_per_order\[1\]"),
        (lambda d: d.update(dtype="bf16"), r"'bf16' is not one of"),
    ],
)
def test_the_validator_rejects_broken_ppl_documents(change, message):
    doc = copy.deepcopy(GOOD_PPL)
    change(doc)
    with pytest.raises(SchemaError, match=message):
        validate(doc, "ppl")


def test_nested_samples_are_checked():
    doc = {
        "streams": 1,
        "length": 2,
        "forward_calls": 2,
        "seconds": 0.1,
        "tokens_per_s": 20.0,
        "checkpoint": "c",
        "step": None,
        "weights": "raw",
        "prompt_tokens": 0,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
        "sample_dtype": "float32",
        "samples": [{"tokens": [4, 5], "text": "ab"}],
    }
    validate(doc, "generate")
    doc["samples"].append({"tokens": [4, 5.5]})
    with pytest.raises(SchemaError) as err:
        validate(doc, "generate")
    assert "$.samples[1].text: missing" in str(err.value) and "$.samples[1].tokens[1]" in str(err.value)


def test_docs_describe_every_field():
    """Each schema field appears as a table row "| `name` |" in docs/EVALUATION.md."""
    text = DOC.read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", text, flags=re.M))
    fields = set(PPL_COMMON) | set(GENERATE) | set(SAMPLE) | set(SBP) | set(SBP_ROW) | set(ZEROSHOT) | set(ZEROSHOT_ROW)
    for kind_fields in PPL_BY_KIND.values():
        fields |= set(kind_fields)
    assert not fields - documented, f"fields missing from {DOC.name}: {sorted(fields - documented)}"
