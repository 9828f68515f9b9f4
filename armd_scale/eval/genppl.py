"""Generative perplexity of samples under a judge model, and their unigram entropy (docs/EVALUATION.md).

A judge scores each sample left to right: gen PPL = exp(sum of judge NLL / number of judge tokens),
token-weighted over all samples. Judges:
- a causal LM loadable by `transformers`: a local directory (`config.json` with a `model_type`) or a
  hub name (`gpt2-large`) found in the local Hugging Face cache; nothing is ever downloaded. Scored
  with MDLM's published protocol (`TransformersJudge`: retokenization, first token unscored, one EOS
  per sample counted, float32), so numbers compare with the MDLM/BD3LM/SEDD tables;
- an ARMD or AR checkpoint (any `--checkpoint` PATH), scored with the exact l2r likelihood in
  float64; with the generator's tokenizer (same SHA-256) it reads the sampled ids directly, else the
  decoded text re-tokenized;
- none given: the generator itself, scored l2r ("self"), which measures consistency, not quality.

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

from ..data.tokenizers.base import Tokenizer
from .text import codec_for


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

    def score(self, samples: np.ndarray, codec: Tokenizer) -> JudgeScore: ...


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
            "weights": self.pre.weights,
            "tokenizer": tokenizer,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def _inputs(self, samples: np.ndarray, codec: Tokenizer) -> list[list[int]]:
        same = bool(codec.sha256) and codec.sha256 == self.codec.sha256
        self.retokenized = not same
        if same:
            return [list(map(int, row)) for row in samples]
        return [self.codec.encode(codec.decode(row)) for row in samples]

    @torch.no_grad()
    def score(self, samples: np.ndarray, codec: Tokenizer) -> JudgeScore:
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
    """A causal LM from a local `transformers` directory (or a hub name found in the local cache),
    scored with MDLM's generative-perplexity protocol (kuleshov-group/mdlm `diffusion.py`,
    `compute_generative_perplexity` and `eval_retokenize`; docs/EVALUATION.md, "Judges"):

    1. every sample is decoded with the generator's tokenizer, its separators written as the judge's
       EOS text (`<|endoftext|>` for GPT-2), as MDLM's `batch_decode` without skip_special_tokens,
       then transformers' `clean_up_tokenization` (" ." -> ".", " 's" -> "'s", ...), which
       `batch_decode` applied by default in the transformers release MDLM pins (4.38);
    2. all samples are re-tokenized together by the judge's tokenizer: no BOS added, truncated to
       `max_length` tokens (the sample length N, as MDLM's `config.model.length`), right-padded
       with EOS to the longest, with an attention mask;
    3. batches of `batch_size` (MDLM: 8) run through the judge in `dtype` (MDLM: float32);
    4. targets 1..L-1 are scored (the first token is context only): NLL = cross-entropy of
       logits[:, :-1] against ids[:, 1:], weighted by (token != EOS) or (it is the first EOS of its
       row), so one EOS per row counts and padding after it does not;
    5. gen PPL = exp(sum of weighted NLL / sum of weights): token-weighted over all samples.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
        max_length: int | None = None,
        name: str | None = None,
    ):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ImportError(
                f"judge {path} is a transformers model directory, but the `transformers` package is not "
                "installed: pip install transformers (or judge with an armd checkpoint)"
            ) from None
        self.path = str(path)
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"judge {self.path}: its tokenizer has no EOS token, which the protocol pads with")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # as MDLM does
        # transformers 5 loads in the checkpoint's dtype unless told: pin the precision the protocol names
        loaded = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        cfg = loaded.config
        model: torch.nn.Module = loaded
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dtype = dtype
        self.batch_size = batch_size
        context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        self.context = int(context or 1024)
        self.max_length = min(max_length or self.context, self.context)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "transformers",
            "path": self.path,
            **({"name": self.name} if self.name else {}),
            "tokenizer": "retokenized",
            "dtype": str(self.dtype).removeprefix("torch."),
            "protocol": "mdlm",
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }

    def texts(self, samples: np.ndarray, codec: Tokenizer) -> list[str]:
        """Step 1: each sample's text, generator separators written as the judge's EOS text."""
        eos_text = self.tokenizer.eos_token
        out = []
        for row in samples:
            row = [int(t) for t in row]
            cuts = [i for i, t in enumerate(row) if t == codec.eos_id] if codec.eos_id is not None else []
            parts, start = [], 0
            for cut in cuts + [len(row)]:
                parts.append(codec.decode(row[start:cut]))
                start = cut + 1
            out.append(self.tokenizer.clean_up_tokenization(eos_text.join(parts)))
        return out

    @torch.no_grad()
    def score(self, samples: np.ndarray, codec: Tokenizer) -> JudgeScore:
        import torch.nn.functional as F

        texts = self.texts(samples, codec)
        full = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        truncated = sum(len(ids) > self.max_length for ids in full)
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            return_token_type_ids=False,
            return_attention_mask=True,
            truncation=True,
            padding=True,
            max_length=self.max_length,
            add_special_tokens=False,
        )
        device = next(self.model.parameters()).device
        eos = self.tokenizer.eos_token_id
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, enc["input_ids"].shape[0], self.batch_size):
            ids = enc["input_ids"][start : start + self.batch_size].to(device)
            mask = enc["attention_mask"][start : start + self.batch_size].to(device)
            logits = self.model(ids, attention_mask=mask).logits
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            first_eos = (ids == eos).cumsum(dim=-1) == 1
            weight = (first_eos | (ids != eos))[:, 1:]
            total += (nll.double() * weight).sum()
            count += weight.sum()
        return JudgeScore(float(total), int(count), truncated)


def resolve_hub_model(name: str) -> str:
    """The local snapshot folder of hub model `name` (e.g. gpt2-large) in the Hugging Face cache;
    never downloads."""
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as e:  # not cached (the error class differs between huggingface_hub versions)
        raise FileNotFoundError(
            f"judge '{name}' is not a local path and is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}; {type(e).__name__}). armd_scale never downloads: on a machine with "
            f'internet run `hf download {name}` once (docs/EVALUATION.md, "Judges"), or pass a model directory'
        ) from None


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


def load_judge(
    path: str | None,
    *,
    generator_path: str,
    device: str | torch.device = "cpu",
    max_length: int | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
) -> Judge:
    """The judge at `path`: an armd checkpoint, a transformers directory, a hub name found in the local
    Hugging Face cache (`gpt2-large`), or (None) the generator itself. `max_length`, `dtype` and
    `batch_size` apply to transformers judges (the MDLM protocol)."""
    from ..checkpoints.pretrained import load_pretrained
    from ..data.tokenizers.hf import is_hub_name

    if path is None:
        return CheckpointJudge(load_pretrained(generator_path, device=device, dtype=torch.float64), kind="self")
    if is_transformers_dir(path) or (not Path(path).expanduser().exists() and is_hub_name(path)):
        local = path if is_transformers_dir(path) else resolve_hub_model(path)
        return TransformersJudge(
            local,
            device=device,
            max_length=max_length,
            dtype=dtype,
            batch_size=batch_size,
            name=None if local == path else path,
        )
    return CheckpointJudge(load_pretrained(path, device=device, dtype=torch.float64))
