"""Generative perplexity of samples under a judge model, and their unigram entropy (docs/EVALUATION.md).

A judge scores each sample left to right: gen PPL = exp(sum of judge NLL / number of judge tokens),
token-weighted over all samples. Judges:
- an ARMD or AR checkpoint (any `--checkpoint` PATH), scored with the exact l2r likelihood;
- a causal LM directory loadable by `transformers` (`config.json` with a `model_type`), read from the
  local path only: nothing is ever downloaded;
- none given: the generator itself, scored l2r ("self"), which measures consistency, not quality.

What the judge reads: with the same tokenizer (same SHA-256) the sampled ids directly; otherwise the
generator's decoded text, re-tokenized by the judge. Scoring runs in float64 unless the judge refuses
it, because low-probability tokens dominate generative perplexity and float32 shifts them.

Unigram entropy: the entropy (nats) of the token histogram of one sample, averaged over samples. A
model that repeats itself gets a low gen PPL *and* a low entropy, which is why both are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .text import TextCodec, codec_for


@dataclass
class JudgeScore:
    nll: float  # total nats over all samples
    tokens: int  # judge tokens scored
    truncated: int = 0  # samples cut to the judge's context length

    @property
    def nll_per_token(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def ppl(self) -> float:
        return float(np.exp(self.nll_per_token))


class Judge(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def score(self, samples: np.ndarray, codec: TextCodec) -> JudgeScore: ...


def unigram_entropy(samples: np.ndarray) -> float:
    """Mean over rows of the entropy (nats) of the row's token histogram; samples: [K, N] ids."""
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ValueError(f"samples must be [num_samples, length > 0], got shape {samples.shape}")
    out = []
    for row in samples:
        counts = np.unique(row, return_counts=True)[1].astype(np.float64)
        p = counts / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out))


class CheckpointJudge:
    """An ARMD/AR checkpoint scored with its exact left-to-right likelihood."""

    def __init__(self, pretrained, *, kind: str = "checkpoint", batch_size: int = 16):
        self.pre = pretrained
        self.codec = codec_for(pretrained)
        self.kind = kind
        self.batch_size = batch_size
        self.max_len = pretrained.config.model.max_seq_len
        self.dtype = next(pretrained.model.parameters()).dtype
        self.retokenized: bool | None = None

    def describe(self) -> dict[str, Any]:
        tokenizer = {None: "unknown", True: "retokenized", False: "same"}[self.retokenized]
        return {
            "kind": self.kind,
            "arch": self.pre.config.model.arch,
            "path": str(self.pre.source),
            "step": self.pre.step,
            "tokenizer": tokenizer,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def _inputs(self, samples: np.ndarray, codec: TextCodec) -> list[list[int]]:
        same = codec.sha256 is not None and codec.sha256 == self.codec.sha256
        self.retokenized = not same
        if same:
            return [list(map(int, row)) for row in samples]
        return [self.codec.encode(codec.decode(row)) for row in samples]

    @torch.no_grad()
    def score(self, samples: np.ndarray, codec: TextCodec) -> JudgeScore:
        seqs = self._inputs(samples, codec)
        truncated = sum(len(s) > self.max_len for s in seqs)
        seqs = [s[: self.max_len] for s in seqs if s]
        device = next(self.pre.model.parameters()).device
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start : start + self.batch_size]
            n = max(len(s) for s in chunk)
            # built on the host and copied once; right padding is exact under l2r (position k sees < k)
            x = torch.zeros(len(chunk), n, dtype=torch.long)
            mask = torch.zeros(len(chunk), n, dtype=torch.bool)
            for i, s in enumerate(chunk):
                x[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = True
            count += int(mask.sum())
            x, mask = x.to(device), mask.to(device)
            order = torch.arange(n, device=device).expand(len(chunk), n)
            logp = torch.log_softmax(self.pre.model(x, order, order).to(self.dtype), dim=-1)
            nll = -logp.gather(-1, x.unsqueeze(-1)).squeeze(-1)
            total += torch.where(mask, nll.double(), 0.0).sum()  # on the device (no sync), read once below
        return JudgeScore(float(total), count, truncated)


class TransformersJudge:
    """A causal LM from a local `transformers` directory; the tokenizer must sit beside it."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu"):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ImportError(
                f"judge {path} is a transformers model directory, but the `transformers` package is not "
                "installed: pip install transformers (or judge with an armd checkpoint)"
            ) from None
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
        cfg = loaded.config
        model: torch.nn.Module = loaded
        model = model.to(device).eval()
        try:
            model = model.to(torch.float64)
        except (RuntimeError, TypeError, ValueError):  # quantized or otherwise fixed-precision weights
            pass
        self.model = model
        self.dtype = next(model.parameters()).dtype
        context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        self.max_len = int(context or 1024)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "transformers",
            "path": self.path,
            "tokenizer": "retokenized",
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.no_grad()
    def score(self, samples: np.ndarray, codec: TextCodec) -> JudgeScore:
        device = next(self.model.parameters()).device
        bos = self.tokenizer.bos_token_id
        total, count, truncated = 0.0, 0, 0
        for row in samples:
            ids = self.tokenizer(codec.decode(row), add_special_tokens=False)["input_ids"]
            ids = ([bos] if bos is not None else []) + list(ids)  # without BOS the first token is unscored
            truncated += len(ids) > self.max_len
            ids = ids[: self.max_len]
            if len(ids) < 2:
                continue
            x = torch.tensor([ids], device=device)
            logp = torch.log_softmax(self.model(x).logits[:, :-1].to(self.dtype), dim=-1)
            total += float(-logp.gather(-1, x[:, 1:].unsqueeze(-1)).double().sum())
            count += len(ids) - 1
        return JudgeScore(total, count, truncated)


def is_transformers_dir(path: str | Path) -> bool:
    """A `transformers` model folder: config.json with a `model_type` (our exports nest `config`)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(raw, dict) and "model_type" in raw and "config" not in raw


def load_judge(path: str | None, *, generator_path: str, device: str | torch.device = "cpu") -> Judge:
    """The judge at `path` (armd checkpoint or transformers directory), or the generator itself."""
    from ..checkpoints.pretrained import load_pretrained

    if path is None:
        return CheckpointJudge(load_pretrained(generator_path, device=device, dtype=torch.float64), kind="self")
    if is_transformers_dir(path):
        return TransformersJudge(path, device=device)
    return CheckpointJudge(load_pretrained(path, device=device, dtype=torch.float64))
