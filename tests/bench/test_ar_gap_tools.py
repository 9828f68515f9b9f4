"""The left-to-right gap study's run list parser and report arithmetic (bench/ar_gap_run.py, ar_gap_report.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import pytest
import yaml

from armd_scale.config import load_config
from armd_scale.model.flops import training_flops_per_token

from .test_study_tools import REPO


def load_script(name: str):
    """Import bench/<name>.py under its own name (the report imports the runner by that name, and
    dataclasses need their module registered)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


RUN_LIST = """
define old model.neighbour_heads=0 model.positional_start=true
preset tiny --config tiny-cpu train.order.kind=l2r
run g ar tiny 0,1 model.arch=ar
run g old tiny 3 @old train.lr=1e-3 +random
run g deep tiny 0 @old model.n_layers=6 eqflops
"""


def test_run_list_expands_defines_seeds_and_equal_flops(tmp_path):
    runner = load_script("ar_gap_run")
    path = tmp_path / "runs.txt"
    path.write_text(RUN_LIST)
    presets, runs = runner.parse_run_list(path)
    assert presets["tiny"] == ["--config", "tiny-cpu", "train.order.kind=l2r"]
    assert [(r.name, r.seed) for r in runs] == [("ar", 0), ("ar", 1), ("old", 3), ("deep", 0)]
    old = runs[2]
    assert old.overrides == ["model.neighbour_heads=0", "model.positional_start=true", "train.lr=1e-3"]
    assert old.eval_random and not runs[0].eval_random
    assert old.dir(tmp_path) == tmp_path / "runs" / "g" / "old" / "seed3"
    # eqflops: a 6-layer ARMD trains as many steps as cost the 4-layer AR's FLOPs at the preset's steps
    steps = int(runs[3].overrides[-1].removeprefix("train.steps="))
    base = load_config("tiny-cpu")
    deep = load_config("tiny-cpu", ["model.n_layers=6", "model.neighbour_heads=0", "model.positional_start=true"])
    ar_flops = training_flops_per_token(dataclasses.replace(base.model, arch="ar"), 128) * base.train.steps
    assert steps == round(ar_flops / training_flops_per_token(deep.model, 128))
    assert 0 < steps < base.train.steps


@pytest.mark.parametrize(
    "text,message",
    [
        ("run g a nopreset 0 x=1", "preset 'nopreset' is not defined"),
        ("preset p --config tiny-cpu\nrun g a p 0 @missing", "'@missing' is not defined"),
        ("preset p --config tiny-cpu\nrun g a p zero", "seeds 'zero'"),
        ("bogus line", "expected 'define'"),
    ],
)
def test_run_list_errors_name_the_line(tmp_path, text, message):
    runner = load_script("ar_gap_run")
    path = tmp_path / "runs.txt"
    path.write_text(text)
    with pytest.raises(runner.RunListError, match=message) as info:
        runner.parse_run_list(path)
    assert f"{path}:" in str(info.value)


def test_missing_environment_variable_fails_only_the_run_that_needs_it(tmp_path, monkeypatch):
    runner = load_script("ar_gap_run")
    monkeypatch.delenv("ARGAP_TEST_DATA", raising=False)
    path = tmp_path / "runs.txt"
    path.write_text("preset p --config tiny-cpu data.train=${ARGAP_TEST_DATA}/x\nrun g a p 0\n")
    presets, runs = runner.parse_run_list(path)
    status = runner.execute(runs[0], presets, tmp_path)
    assert status.startswith("FAILED g/a/seed0") and "ARGAP_TEST_DATA" in status
    assert not (tmp_path / "runs").exists()


def test_gap_at_equal_flops_reads_the_curves():
    """ARMD costs 1.25x AR per step: at AR's final FLOPs (step 400) ARMD is at step 320."""
    report = load_script("ar_gap_report")

    def variant(curve, flops_per_token):
        facts = {"curve": curve, "flops_per_token": flops_per_token, "tokens_per_step": 10}
        return {"seeds": {0: facts}}

    ar = variant([(0, 6.0), (200, 5.0), (400, 4.0)], 1.0)
    armd = variant([(0, 6.0), (160, 5.5), (320, 4.5), (480, 4.0)], 1.25)
    assert report.gap_at_equal_flops(armd, ar) == pytest.approx(0.5)
    # along the way: at ARMD's step 160 (AR step 200) the gap is 0.5 as well
    assert dict(report.gap_curve(armd, ar))[160 * 12.5] == pytest.approx(0.5)
    assert report.interpolate([(0, 1.0), (10, 2.0)], 11) is None


def test_report_on_finished_runs(tmp_path):
    """Two fake finished runs of one preset: the table lists them with the gap to AR."""
    report = load_script("ar_gap_report")
    runs_file = tmp_path / "runs.txt"
    runs_file.write_text("preset tiny --config tiny-cpu\nrun g ar tiny 0 model.arch=ar\nrun g nb tiny 0 x.y=1\n")
    cfg = load_config("tiny-cpu")
    for name, arch, finals in (("ar", "ar", [4.0, 3.0]), ("nb", "armd", [4.5, 3.2])):
        run_dir = tmp_path / "out" / "runs" / "g" / name / "seed0"
        run_dir.mkdir(parents=True)
        raw = cfg.to_dict()
        raw["model"]["arch"] = arch
        (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
        lines = [{"step": 300, "val/nll": finals[0]}, {"step": 600, "val/nll": finals[1]}]
        (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (run_dir / "exit_status.json").write_text(json.dumps({"reason": "finished"}))
    docs = tmp_path / "docs"
    assert report.main(["--out", str(tmp_path / "out"), "--runs", str(runs_file), "--docs", str(docs)]) == 0
    table = (docs / "results.md").read_text()
    assert "| nb | 3.200 | 3.200 | +0.200 |" in table
    summary = json.loads((docs / "summary.json").read_text())
    nb = next(r for r in summary["variants"] if r["name"] == "nb")
    assert nb["flops_vs_ar"] > 1.0


def test_the_study_run_list_parses():
    runner = load_script("ar_gap_run")
    presets, runs = runner.parse_run_list(REPO / "bench" / "ar_gap_runs.txt")
    assert {"tiny", "study"} <= set(presets)
    names = {(r.group, r.name) for r in runs}
    assert ("table", "ar") in names and ("table", "old") in names


@pytest.mark.parametrize("schedule,counted", [("constant", True), ("cosine", False)])
def test_a_stopped_run_is_read_at_its_last_step_only_with_a_constant_lr(tmp_path, schedule, counted):
    """A run cut short at step 150 of 300: with a constant learning rate its model at 150 is that of a
    150-step run, so its gap is read against AR's curve at step 150; with a decaying one it is left out."""
    report = load_script("ar_gap_report")
    runs_file = tmp_path / "runs.txt"
    runs_file.write_text("preset p --config tiny-cpu\nrun g ar p 0 model.arch=ar\nrun g cut p 0 x.y=1\n")
    cfg = load_config("tiny-cpu")
    curves = {"ar": [(100, 5.0), (200, 4.0), (300, 3.5)], "cut": [(100, 5.2), (150, 4.4)]}
    for name, curve in curves.items():
        run_dir = tmp_path / "out" / "runs" / "g" / name / "seed0"
        run_dir.mkdir(parents=True)
        raw = cfg.to_dict()
        raw["model"]["arch"] = "ar" if name == "ar" else "armd"
        raw["train"].update(steps=300, lr_schedule=schedule)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val/nll": y}) + "\n" for s, y in curve))
        if name == "ar":  # only the reference finished
            (run_dir / "exit_status.json").write_text(json.dumps({"reason": "finished"}))
    docs = tmp_path / "docs"
    assert report.main(["--out", str(tmp_path / "out"), "--runs", str(runs_file), "--docs", str(docs)]) == 0
    rows = {r["name"]: r for r in json.loads((docs / "summary.json").read_text())["variants"]}
    if not counted:
        assert "cut" not in rows
        return
    cut = rows["cut"]
    assert cut["steps"] == 150 and cut["partial_of"] == 300
    assert cut["gap_equal_steps"] == pytest.approx(4.4 - 4.5)  # AR at step 150: halfway from 5.0 to 4.0
    assert "150 of 300 (stopped)" in (docs / "results.md").read_text()


def test_the_paper_model_run_list_parses_and_names_each_input_in_full(monkeypatch):
    """Every run of bench/paper_model_runs.txt resolves to a valid config, and each ARMD input is the
    form its define says whatever the defaults are (query_input and the PE start spelled out)."""
    runner = load_script("ar_gap_run")
    monkeypatch.setenv("ARGAP_DATA", "/nonexistent")
    presets, runs = runner.parse_run_list(REPO / "bench" / "paper_model_runs.txt")
    assert {"tiny", "study", "scaleM", "scaleL"} <= set(presets)
    for run in runs:
        if "model.arch=ar" in run.overrides:
            continue
        assert any(o.startswith("model.query_input=") for o in run.overrides), run.name
        assert any(o.startswith("model.pe_init=") for o in run.overrides), run.name
    tiny = {r.name: r for r in runs if r.group == "tiny"}
    cfg = runner.resolved_config(presets["tiny"], tiny["shift"].overrides)
    assert cfg.model.query_input == "paper" and cfg.model.pe_init == "shift"
    cfg = runner.resolved_config(presets["tiny"], tiny["newd"].overrides)
    assert cfg.model.query_input == "neighbour" and cfg.model.neighbour_heads == 4


def test_a_run_shortened_to_ars_flops_reports_its_end_as_the_equal_flops_gap(tmp_path):
    """A cosine run whose steps make its training FLOPs AR's (eqflops) compares its end with AR's end;
    a run at 1.23x AR's FLOPs gets no equal-FLOPs gap (its curve is of another schedule)."""
    report = load_script("ar_gap_report")
    runner = load_script("ar_gap_run")
    runs_file = tmp_path / "runs.txt"
    runs_file.write_text(
        "preset tiny --config tiny-cpu\nrun g ar tiny 0 model.arch=ar\n"
        "run g full tiny 0 x.y=1\nrun g short tiny 0 x.y=2\n"
    )
    cfg = load_config("tiny-cpu")
    steps = {"ar": 600, "full": 600, "short": runner.equal_flop_steps(["--config", "tiny-cpu"], [])}
    assert steps["short"] < 600
    for name, final in (("ar", 3.0), ("full", 3.1), ("short", 3.25)):
        run_dir = tmp_path / "out" / "runs" / "g" / name / "seed0"
        run_dir.mkdir(parents=True)
        raw = cfg.to_dict()
        raw["model"]["arch"] = "ar" if name == "ar" else "armd"
        raw["train"]["steps"] = steps[name]
        (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": steps[name], "val/nll": final}) + "\n")
        (run_dir / "exit_status.json").write_text(json.dumps({"reason": "finished"}))
    docs = tmp_path / "docs"
    assert report.main(["--out", str(tmp_path / "out"), "--runs", str(runs_file), "--docs", str(docs)]) == 0
    rows = {r["name"]: r for r in json.loads((docs / "summary.json").read_text())["variants"]}
    assert rows["short"]["flops_vs_ar"] == pytest.approx(1.0, abs=0.01)
    assert rows["short"]["gap_equal_flops"] == pytest.approx(0.25)
    assert rows["full"].get("gap_equal_flops") is None and rows["full"]["gap_equal_steps"] == pytest.approx(0.1)


def test_the_ar_reference_pools_every_seed_of_the_preset_across_groups(tmp_path):
    """AR seed 0 listed in one group and seed 1 in another are one reference of mean (3.0 + 3.2) / 2; an
    'ar' run with other overrides (another model) is not pooled into it, nor a seed still running."""
    report = load_script("ar_gap_report")
    runs_file = tmp_path / "runs.txt"
    runs_file.write_text(
        "preset tiny --config tiny-cpu\nrun g ar tiny 0 model.arch=ar\nrun h ar tiny 1 model.arch=ar\n"
        "run k ar tiny 2 model.arch=ar model.n_layers=1\nrun h nb tiny 1 x.y=1\nrun m ar tiny 3 model.arch=ar\n"
    )
    cfg = load_config("tiny-cpu")
    for group, name, seed, final in (
        ("g", "ar", 0, 3.0),
        ("h", "ar", 1, 3.2),
        ("k", "ar", 2, 9.0),
        ("h", "nb", 1, 3.4),
    ):
        run_dir = tmp_path / "out" / "runs" / group / name / f"seed{seed}"
        run_dir.mkdir(parents=True)
        raw = cfg.to_dict()
        raw["model"]["arch"] = "ar" if name == "ar" else "armd"
        (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": cfg.train.steps, "val/nll": final}) + "\n")
        (run_dir / "exit_status.json").write_text(json.dumps({"reason": "finished"}))
    running = tmp_path / "out" / "runs" / "m" / "ar" / "seed3"  # halfway, far behind: not in the reference
    running.mkdir(parents=True)
    raw = cfg.to_dict()
    raw["model"]["arch"] = "ar"
    raw["train"]["lr_schedule"] = "constant"  # a stopped constant-lr run is read at its last step
    (running / "config.yaml").write_text(yaml.safe_dump(raw))
    curve = [{"step": 10, "val/nll": 6.0}, {"step": cfg.train.steps // 2, "val/nll": 5.0}]
    (running / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in curve) + "\n")
    docs = tmp_path / "docs"
    assert report.main(["--out", str(tmp_path / "out"), "--runs", str(runs_file), "--docs", str(docs)]) == 0
    rows = {(r["group"], r["name"]): r for r in json.loads((docs / "summary.json").read_text())["variants"]}
    assert rows[("h", "nb")]["gap_equal_steps"] == pytest.approx(3.4 - 3.1)
