"""Tiny real training runs (`armd train` in a subprocess) shared by the eval and generate tests.

Each run is built once per test session under pytest's base temp directory, whichever test module
asks first, so tests/eval and tests/generate share them.

- `markov`: a 2-layer ARMD trained left to right on a first-order Markov source over 8 symbols (ids
  shifted by 4), 300 steps. It should reach the source's entropy rate.
- `text`: a 2-layer ARMD on the built-in pydoc corpus with a 128-piece tokenizer, 20 steps: a
  checkpoint with a real text tokenizer, for bits per byte, text input, generation and the sweep.
- `text_ar`: the `ar` baseline with the same tokenizer, 10 steps: a judge.
- `text_mdlm`: the `mdlm` baseline with the same tokenizer, 10 steps: for the study's mdlm tools.
- `text_bpe`, `text_wordpiece`: a 2-layer ARMD, 20 steps, on pydoc shards built here with a
  GPT-2-style byte-level BPE / BERT-style WordPiece tokenizer.json of 400 ids trained here, the model's
  vocabulary padded to 448 (as GPT-2's 50,257 -> 50,304).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

MARKOV = "synthetic:markov?vocab=8&order=1&seed=0&samples=4096&val_samples=256"
SEQ_LEN = 32
TINY_MODEL = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=2",
    f"model.max_seq_len={SEQ_LEN}",
    "model.d_pe=8",
    f"data.seq_len={SEQ_LEN}",
]
COMMON = [
    "train.global_batch_size=16",
    "train.micro_batch_size=16",
    "train.warmup_steps=10",
    "train.log_every=50",
    "train.eval_every=0",
    "log.wandb=off",
    "log.progress_bar=false",
    "train.order.kind=l2r",
]
RUNS: dict[str, list[str]] = {
    "markov": [
        *TINY_MODEL,
        *COMMON,
        "model.vocab_size=12",
        "data.vocab_size=12",
        f"data.train={MARKOV}",
        "train.lr=1e-2",
        "train.steps=300",
        "train.checkpoint_every=300",
    ],
    "text": [
        *TINY_MODEL,
        *COMMON,
        "model.vocab_size=128",
        "data.vocab_size=128",
        "data.train=builtin:pydoc",
        "train.lr=3e-3",
        "train.steps=20",
        "train.checkpoint_every=20",
    ],
    "text_ar": [
        *TINY_MODEL,
        *COMMON,
        "model.arch=ar",
        "model.vocab_size=128",
        "data.vocab_size=128",
        "data.train=builtin:pydoc",
        "train.lr=3e-3",
        "train.steps=10",
        "train.checkpoint_every=10",
    ],
    "text_mdlm": [
        *TINY_MODEL,
        *COMMON,
        "model.arch=mdlm",
        "model.vocab_size=128",
        "data.vocab_size=128",
        "data.train=builtin:pydoc",
        "train.lr=3e-3",
        "train.steps=10",
        "train.checkpoint_every=10",
    ],
}
HF_VOCAB, HF_PADDED_VOCAB = 400, 448
# runs on shards of a Hugging Face tokenizer trained here: name -> tokenizer kind
HF_RUNS = {"text_bpe": "byte-bpe", "text_wordpiece": "wordpiece"}
for _name in HF_RUNS:
    RUNS[_name] = [
        *TINY_MODEL,
        *COMMON,
        f"model.vocab_size={HF_PADDED_VOCAB}",
        "train.lr=3e-3",
        "train.steps=20",
        "train.checkpoint_every=20",
    ]


def hf_data(base: Path, kind: str) -> tuple[Path, Path]:
    """(tokenizer dir, shard dir with train/ and val/) of pydoc with a `kind` tokenizer, built once."""
    from armd_scale.data.manifest import MANIFEST_FILE
    from armd_scale.data.prepare.shards import build_shards
    from armd_scale.data.prepare.tokenizer_training import train_tokenizer

    tok, shards = base / f"tok-{kind}", base / f"shards-{kind}"
    if not (shards / "train" / MANIFEST_FILE).is_file():
        train_tokenizer(["builtin:pydoc"], str(tok), vocab_size=HF_VOCAB, kind=kind)
        build_shards(["builtin:pydoc"], str(shards), str(tok), seq_len=SEQ_LEN, val_fraction=0.05, overwrite=True)
    return tok, shards


@dataclass
class TinyRun:
    dir: Path
    cache: Path
    overrides: list[str]

    def data_urls(self) -> tuple[str, str | None, str | None]:
        """(train shards, val shards, tokenizer dir) of the run's built-in data set."""
        from armd_scale.config import load_config
        from armd_scale.data.prepare.builtin import ensure_builtin_dataset

        cfg = load_config(
            None, [o for o in self.overrides if o.startswith(("data.", "model."))] + [f"data.cache_dir={self.cache}"]
        )
        return ensure_builtin_dataset(cfg.data, build=False)


def _train_extras() -> list[str]:
    """No end-of-training sample (it needs a text tokenizer; older configs lack the key)."""
    from dataclasses import fields

    from armd_scale.config import TrainConfig

    return ["train.sample_at_end=0"] if "sample_at_end" in {f.name for f in fields(TrainConfig)} else []


def cli_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"  # tiny models: one thread is faster on a shared CPU
    env["WANDB_MODE"] = "offline"
    return env


def tiny_run(factory: pytest.TempPathFactory, name: str) -> TinyRun:
    base = factory.getbasetemp() / "eval_runs"
    run_dir, cache = base / name, base / "cache"
    overrides = list(RUNS[name])
    if name in HF_RUNS:
        tok, shards = hf_data(base, HF_RUNS[name])
        overrides += [f"data.train={shards / 'train'}", f"data.val={shards / 'val'}", f"data.tokenizer={tok}"]
    run = TinyRun(run_dir, cache, overrides)
    status = run_dir / "exit_status.json"
    if status.is_file() and json.loads(status.read_text())["code"] == 0:
        return run
    cmd = [
        sys.executable,
        "-m",
        "armd_scale.cli",
        "train",
        *overrides,
        *_train_extras(),
        f"data.cache_dir={cache}",
        f"run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"training the '{name}' run failed:\n{proc.stdout}\n{proc.stderr}"
    return run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """In-process CLI calls: a 2-thread pool on a busy 2-core machine makes tiny ops 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
