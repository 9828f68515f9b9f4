"""A few samples at every validation, so a run shows what the model generates while it trains.

`train.eval_samples` samples per method, of min(train.eval_sample_tokens, data.seq_len) tokens, at
temperature 1 (the distribution the likelihoods measure): left to right, and SBP with 4 streams where the
model decodes blocks in parallel (armd); a model with an ancestral sampler (mdlm) uses it with one denoising
step per token. Each goes through the one sampling entry point, `armd_scale.generate.sample`, as the
end-of-run sample (train/sample_report.py) and `armd generate` do.

Written to RUN_DIR/samples.jsonl, one record per sample (step, method, index, forward_calls, tokens, and the
text, or the ids for a tokenizer without text), and to wandb as a table (step, method, text).

Reproducible and harmless to training: the samples of step s are drawn from a CPU generator seeded by
(train.seed, s) (armd_scale/rng.py), nothing draws from torch's global generators, and the model's
train/eval mode is restored. So a run logs the same samples at a step whether or not it was resumed, and
its losses are the same with or without samples. A resumed run that repeats a validation (stopped after it,
before the next checkpoint) appends the same records again, as it does to metrics.jsonl.

Only where rank 0 holds the whole model (no tensor parallelism, ZeRO below 3), like the end-of-run sample:
elsewhere the weights are spread over ranks and a sampler on rank 0 alone cannot run; the run says so once.
Other ranks do nothing (no collective runs while rank 0 samples). A sampler that fails costs the samples of
that evaluation, never the run; a samples.jsonl that cannot be written fails the run as metrics.jsonl does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import describe_write_failure
from ..config import Config
from .metrics import MetricsLogger, MetricsWriteError
from .step_orders import step_generator

_SAMPLE_SALT = 0x73616D70  # "samp": sample streams independent of the training orders and noise
SBP_STREAMS = 4
SAMPLES_FILE = "samples.jsonl"


class EvalSamples:
    """Draws and logs the samples of one validation (rank 0; a no-op elsewhere)."""

    def __init__(self, cfg: Config, run_dir: Path, tokenizer_dir: str | None, metrics: MetricsLogger):
        self.cfg = cfg
        self.path = run_dir / SAMPLES_FILE
        self.tokenizer_dir = tokenizer_dir
        self.metrics = metrics
        self.length = min(cfg.train.eval_sample_tokens, cfg.data.seq_len)
        self.tokenizer: Any = None
        self.why_none: str | None = None  # set once the run knows it logs no samples
        if not metrics.is_main or cfg.train.eval_samples <= 0:
            self.why_none = ""  # nothing to say
        elif cfg.parallel.tp > 1 or cfg.parallel.zero_stage >= 3:
            self.why_none = (
                f"no samples logged during training: rank 0 does not hold the whole model (parallel.tp="
                f"{cfg.parallel.tp}, parallel.zero_stage={cfg.parallel.zero_stage}); sample a checkpoint with "
                "`armd generate`"
            )

    def log(self, model, step: int) -> None:
        """Sample from `model` (the unwrapped module) and log the records; says once why there are none."""
        if self.why_none is not None:
            if self.why_none:
                self.metrics.message(self.why_none)
                self.why_none = ""
            return
        try:
            records = self.draw(model, step)
        except Exception as e:  # noqa: BLE001 - a sampler fault costs this evaluation's samples, not the run
            self.metrics.message(f"step {step}: no samples ({type(e).__name__}: {e})")
            return
        self.write(records)
        self.metrics.log_table(step, "samples", ["step", "method", "text"], [self.row(r) for r in records])

    def draw(self, model, step: int) -> list[dict[str, Any]]:
        """The records of step `step`'s samples: left to right (or ancestral) and SBP where it applies."""
        from ..generate import SampleRequest, sample

        count, length = self.cfg.train.eval_samples, self.length
        methods = [1] + ([SBP_STREAMS] if model.parallel_decoding and length % SBP_STREAMS == 0 else [])
        was_training = model.training
        model.eval()
        records = []
        try:
            for streams in methods:
                gen = step_generator(self.cfg.train.seed ^ _SAMPLE_SALT ^ (streams << 32), step)
                request = SampleRequest(length, batch_size=count, streams=streams, temperature=1.0, generator=gen)
                with torch.no_grad():
                    result = sample(model, request)
                if result.diffusion_steps is not None:
                    method = f"ancestral{result.diffusion_steps}"
                else:
                    method = "l2r" if streams == 1 else f"sbp{streams}"
                for i, row in enumerate(result.tokens.tolist()):
                    record = {"step": step, "method": method, "index": i, "forward_calls": result.forward_calls}
                    records.append(record | {"tokens": len(row)} | self.decoded(row))
        finally:
            model.train(was_training)
        return records

    def decoded(self, ids: list[int]) -> dict[str, Any]:
        """{"text": ...} with a text tokenizer, else {"ids": [...]} (synthetic sources, no tokenizer)."""
        tokenizer = self._tokenizer()
        if tokenizer is None or not getattr(tokenizer, "has_text", False):
            return {"ids": ids}
        return {"text": tokenizer.decode(ids)}

    def _tokenizer(self):
        if self.tokenizer is None and self.tokenizer_dir is not None:
            from ..data.tokenizers.load import load_tokenizer

            try:
                self.tokenizer = load_tokenizer(self.tokenizer_dir)
            except Exception as e:  # noqa: BLE001 - the samples are logged as ids instead
                self.metrics.message(f"samples are logged as ids: the tokenizer did not load ({e})")
                self.tokenizer_dir = None
        return self.tokenizer

    @staticmethod
    def row(record: dict[str, Any]) -> list[Any]:
        text = record["text"] if "text" in record else " ".join(map(str, record["ids"]))
        return [record["step"], record["method"], text]

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append the records, one JSON line each, flushed to the OS before training goes on."""
        try:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
        except OSError as e:
            raise MetricsWriteError(f"samples not written: {describe_write_failure(self.path, e)}") from None
