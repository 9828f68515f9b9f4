"""ConversionReport: one place builds a conversion's record and enforces its exactness bar."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from armd_scale.checkpoints.report import ConversionError, ConversionReport, Progress

SOURCE = SimpleNamespace(folder=Path("/runs/a/checkpoints/step_00000010"), kind="deepspeed", step=10)
BATCH = {"batch": 2, "seq_len": 8, "seed": 0, "order": "random"}


def _report(diff: float, exact: bool) -> ConversionReport:
    return ConversionReport.of(
        "export",
        SOURCE,
        "/out/e",
        Progress(quiet=True),
        reference="the saved weights",
        batch=BATCH,
        max_abs_logit_diff=diff,
        exact_required=exact,
    )


def test_the_report_names_its_source_and_output():
    report = _report(0.0, True)
    assert (report.source, report.source_kind, report.step, report.out) == (
        "/runs/a/checkpoints/step_00000010",
        "deepspeed",
        10,
        "/out/e",
    )
    assert report.seconds >= 0
    report.require_exact("the fp32 export")  # 0 difference passes


def test_an_exact_result_that_differs_is_refused_with_the_difference():
    with pytest.raises(
        ConversionError, match=r"the fp32 export of /runs/a/checkpoints/step_00000010 .* 0\.001 \(must be 0\)"
    ):
        _report(1e-3, True).require_exact("the fp32 export")


def test_a_rounded_result_may_differ():
    _report(1e-3, False).require_exact("the bf16 export")
