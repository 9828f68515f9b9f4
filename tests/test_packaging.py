"""What the package declares: the licence it ships and the dependency range it was tested with."""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")

REPO = Path(__file__).resolve().parents[1]
# MD5 of https://www.apache.org/licenses/LICENSE-2.0.txt, the standard Apache 2.0 text.
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}


def test_license_file_is_the_declared_apache_2_0_text():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_0_MD5
    assert b"Apache License\n                           Version 2.0, January 2004" in text


def test_deepspeed_is_pinned_with_an_upper_bound_that_admits_the_installed_release():
    """The checkpoint code reads DeepSpeed's internal layout: a release outside the tested range must not
    be installed silently, and the one we test with must be inside it."""
    spec = _requirements()["deepspeed"].specifier
    assert any(s.operator == "<" for s in spec), f"deepspeed{spec} has no upper bound"
    assert spec.contains(version("deepspeed")), f"installed deepspeed {version('deepspeed')} is outside {spec}"
    assert not spec.contains("0.20.0")


def test_the_test_extra_installs_the_optional_extras_whose_tests_ci_runs():
    """The judges, --to hf and harness tests skip without transformers / lm-eval: CI installs the test extra,
    so it must carry the same requirements as the transformers and harness extras, and .ci/run checks they import."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test = {str(Requirement(r)) for r in extras["test"]}
    for extra in ("transformers", "harness"):
        assert {str(Requirement(r)) for r in extras[extra]} <= test, f"extra {extra!r} is not in the test extra"
    ci = (REPO / ".ci" / "run").read_text()
    assert "'.[test]'" in ci and 'python -c "import transformers, lm_eval"' in ci
