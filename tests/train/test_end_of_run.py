"""What happens after the last optimizer step: the status file, then the optional sample.

The end-of-run sample runs on the training device. On a GPU it used to fill CUDA tensors from a CPU
generator, which torch refuses, after the last checkpoint and before exit_status.json was written:
a finished Slurm job looked failed. Here the sample runs on the simulated device (CUDA's rules)."""

from __future__ import annotations

import json

import pytest
import torch

from armd_scale.config import DataConfig, load_config
from armd_scale.data.prepare.builtin import ensure_builtin_dataset
from armd_scale.model import build_model
from armd_scale.train.run_status import finish_run
from armd_scale.train.sample_report import print_final_sample
from tests.simulated_device import simulated_device

from .conftest import TINY


@pytest.mark.parametrize("arch", ["armd", "ar", "mdlm"])
def test_end_of_run_sample_runs_on_another_device(arch, data_cache):
    cfg = load_config(None, [*TINY, f"model.arch={arch}", f"data.cache_dir={data_cache}", "train.sample_at_end=16"])
    tokenizer_dir = ensure_builtin_dataset(DataConfig(cache_dir=str(data_cache), seq_len=32, vocab_size=128))[2]
    torch.manual_seed(0)
    model = build_model(cfg.model)
    on_cpu: list[str] = []
    print_final_sample(model, cfg, tokenizer_dir, on_cpu.append)
    on_device: list[str] = []
    with simulated_device() as dev:
        print_final_sample(model.to(dev), cfg, tokenizer_dir, on_device.append)
    assert len(on_cpu) == (2 if arch == "armd" else 1)
    assert on_cpu[0].startswith("sample (mdlm, 16 denoising steps" if arch == "mdlm" else "sample (left to right")
    assert on_device == on_cpu  # the same seeded sample, text and forward-call counts


def test_status_is_written_before_the_optional_work_and_survives_its_failure(tmp_path):
    seen_during_work = []
    said = []

    def sample():
        seen_during_work.append(json.loads((tmp_path / "exit_status.json").read_text()))
        raise RuntimeError("Expected a 'cuda' device type for generator but found 'cpu'")

    errors = finish_run(tmp_path, 0, 120, "finished", [("sample", sample)], say=said.append)
    assert seen_during_work[0]["code"] == 0 and seen_during_work[0]["reason"] == "finished"
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert (status["code"], status["step"], status["reason"]) == (0, 120, "finished")
    assert "device type for generator" in status["end_of_run_errors"]["sample"]
    assert errors == status["end_of_run_errors"]
    assert "end-of-run sample failed" in said[0] and "code 0" in said[0]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_status_without_optional_work_has_no_error_field(tmp_path):
    assert finish_run(tmp_path, 75, 7, "SIGUSR1", []) == {}
    assert json.loads((tmp_path / "exit_status.json").read_text()).keys() == {"code", "step", "reason", "time"}
