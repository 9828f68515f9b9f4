"""EleutherAI lm-evaluation-harness adapter: the `armd` model of lm_eval (lm-eval 0.4.x).

    import armd_scale.eval.harness  # registers "armd"
    lm_eval.simple_evaluate(model="armd", model_args={"checkpoint": "runs/owt-small"}, tasks=["lambada_openai"])

or `armd eval harness --checkpoint PATH --tasks ...` (commands/eval_harness.py). lm-eval 0.4.13
has no plugin entry points for models, so the import above is what registers the name.

What each request type computes (docs/EVALUATION.md, "lm-evaluation-harness"):
- `loglikelihood(context, continuation)`: `armd` and `ar` (`likelihood_kind` "exact") give the **exact** left-to-right
  log-likelihood of the continuation tokens given the context, from one forward pass: the strength
  of ARMD over masked diffusion, which can only bound it. `is_greedy` is whether every continuation
  token is the argmax of its conditional. `mdlm` gives an **ELBO** (a lower bound) estimated as
  LLaDA's evaluation does (ML-GSAI/LLaDA `eval_llada.py:get_loglikelihood`): per draw, l ~ U{1..L}
  of the L continuation tokens are masked (the context never is), and the draw scores
  (L / l) * sum of their log-probabilities; the estimate is the mean of `mc_samples` draws (a
  one-token continuation needs one pass and is exact). `is_greedy` is False for mdlm.
- `loglikelihood_rolling(text)`: lm-eval's disjoint rolling windows (`get_rolling_token_windows`,
  `make_disjoint_window`, context 1, the separator as prefix token), each window scored as above, so
  every token is predicted once; windows hold at most `max_length` tokens.
- `generate_until(context, {until, max_gen_toks, do_sample, temperature, top_p})`: KV-cached
  sampling after the context, left to right or with SBP (`streams` S > 1, arch armd); mdlm uses its
  ancestral sampler (`steps`, default the generated length). Greedy unless `do_sample`. The text is
  cut at the first separator token and then at the first stop string.

Contexts longer than the model are cut from the left (as lm-eval's HF model does); a continuation
longer than the model is an error. Requests are batched by length, longest first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ..model import Model
from ..model.generation_orders import l2r_order
from ..rng import seeded, uniform

DEFAULT_MC_SAMPLES = 128  # LLaDA's mc_num


def _int_arg(value: Any, name: str, minimum: int = 1) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"armd harness model argument {name}={value!r} is not an integer") from None
    if out < minimum:
        raise ValueError(f"armd harness model argument {name}={out} must be >= {minimum}")
    return out


@register_model("armd")
class ARMDHarnessLM(TemplateLM):
    """An armd_scale checkpoint (run dir, checkpoint folder or export) as an lm_eval model."""

    def __init__(
        self,
        checkpoint: str,
        device: str = "auto",
        batch_size: int | str = 8,
        max_batch_size: int | None = None,
        streams: int = 1,
        mc_samples: int = DEFAULT_MC_SAMPLES,
        steps: int | None = None,
        seed: int = 0,
        float64: bool = False,
        max_length: int | None = None,
        **unused: Any,
    ):
        super().__init__()
        from ..checkpoints.pretrained import load_pretrained
        from ..devices import resolve_device
        from .text import codec_for

        self.dtype = torch.float64 if str(float64).lower() in ("1", "true") else torch.float32
        self._device = resolve_device(device or "auto")
        self.pre = load_pretrained(checkpoint, device=self._device, dtype=self.dtype)
        self.model = cast(Model, self.pre.model)  # load_pretrained builds a Model (checkpoints/model_io.py)
        self.arch = self.pre.config.model.arch
        self.codec = codec_for(self.pre)
        if not self.codec.has_text or self.codec.eos_id is None:
            raise ValueError(f"{self.pre.source} has no text tokenizer; lm-eval tasks need one")
        self.eos_id: int = self.codec.eos_id
        self.batch_size = 8 if str(batch_size).startswith("auto") else _int_arg(batch_size, "batch_size")
        self.streams = _int_arg(streams, "streams")
        if self.streams > 1 and not self.model.parallel_decoding:
            raise ValueError(f"streams={self.streams}: SBP decoding needs arch armd, {self.pre.source} is {self.arch}")
        self.mc_samples = _int_arg(mc_samples, "mc_samples")
        self.steps = None if steps is None else _int_arg(steps, "steps")
        self.seed = _int_arg(seed, "seed", minimum=0)
        self.generator = seeded(self.seed)
        model_len = self.pre.config.model.max_seq_len
        self._max_length = model_len if max_length is None else min(_int_arg(max_length, "max_length", 2), model_len)

    # -- what lm_eval asks of a model ------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"armd-{self.codec.sha256}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.codec.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.codec.decode(list(tokens))

    def get_model_info(self) -> dict[str, Any]:
        """Merged into lm_eval's results["config"]: which likelihood the numbers are."""
        exact = self.model.likelihood_kind == "exact"
        return {
            "armd_checkpoint": str(self.pre.source),
            "armd_step": self.pre.step,
            "armd_arch": self.arch,
            "armd_likelihood": "exact" if exact else "elbo",
            "armd_loglikelihood": "exact left-to-right log-likelihood"
            if exact
            else f"ELBO (lower bound), mean of {self.mc_samples} Monte-Carlo draws (LLaDA's estimator)",
            "armd_mc_samples": None if exact else self.mc_samples,
            "armd_streams": self.streams,
            "armd_dtype": str(self.dtype).removeprefix("torch."),
        }

    # -- log-likelihoods -------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        seqs = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("an lm-eval request with an empty continuation has nothing to score")
            if len(continuation) > self.max_length:
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens is longer than the model ({self.max_length})"
                )
            seqs.append(((list(context) + list(continuation))[-self.max_length :], len(continuation)))
        if self.model.likelihood_kind == "bound":
            return [(self._mdlm_loglikelihood(s, n), False) for s, n in tqdm(seqs, disable=disable_tqdm, desc="elbo")]
        return self._l2r_loglikelihoods(seqs, disable_tqdm)

    @torch.no_grad()
    def _l2r_loglikelihoods(self, seqs: list[tuple[list[int], int]], disable_tqdm: bool) -> list[tuple[float, bool]]:
        """Exact: right-padded batches (position k sees only positions < k, so padding changes nothing)."""
        out: list[tuple[float, bool] | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            idx = order[start : start + self.batch_size]
            width = len(seqs[idx[0]][0])
            x = torch.zeros(len(idx), width, dtype=torch.long)
            for row, i in enumerate(idx):
                x[row, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
            x = x.to(self._device)
            positions, blocks = l2r_order(len(idx), width)
            logits = self.model(x, positions.to(self._device), blocks.to(self._device))
            logp = torch.log_softmax(logits.to(self.dtype), dim=-1)
            for row, i in enumerate(idx):
                tokens, n = seqs[i]
                span = slice(len(tokens) - n, len(tokens))
                target = x[row, span]
                picked = logp[row, span].gather(-1, target.unsqueeze(-1)).squeeze(-1)
                greedy = bool((logp[row, span].argmax(dim=-1) == target).all())
                out[i] = (float(picked.double().sum()), greedy)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _mdlm_loglikelihood(self, tokens: list[int], n: int) -> float:
        """LLaDA's conditional ELBO estimate: mean over draws of -(n / l) * masked NLL, l ~ U{1..n}."""
        x = torch.tensor(tokens, device=self._device)
        span = torch.arange(len(tokens) - n, len(tokens), device=self._device)
        draws = 1 if n == 1 else self.mc_samples
        total = 0.0
        for start in range(0, draws, self.batch_size):
            k = min(self.batch_size, draws - start)
            # stratified counts: l_j = 1 + floor(((u + j / draws) mod 1) * n), each uniform on 1..n
            u = uniform(generator=self.generator, dtype=torch.float64)
            j = torch.arange(start, start + k, dtype=torch.float64)
            counts = (1 + torch.floor(torch.remainder(u + j / draws, 1.0) * n)).long().clamp(max=n)
            ranks = uniform(k, n, generator=self.generator, dtype=torch.float64).argsort(dim=1).argsort(dim=1)
            masked_span = (ranks < counts[:, None]).to(self._device)
            masked = torch.zeros(k, len(tokens), dtype=torch.bool, device=self._device)
            masked[:, span] = masked_span
            rows = x.expand(k, -1)
            assert self.model.mask_id is not None  # a bound is the masked-diffusion ELBO: the model has a mask id
            logits = self.model(rows.masked_fill(masked, self.model.mask_id))
            logp = torch.log_softmax(logits.to(self.dtype), dim=-1).gather(-1, rows.unsqueeze(-1)).squeeze(-1)
            per_draw = (logp.double() * masked).sum(dim=1) * (n / counts.to(self._device, torch.float64))
            total += float(per_draw.sum())
        return total / draws

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="rolling"):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length - 1,  # our inputs hold the predicted tokens too: context + window
                    context_len=1,
                )
            ]
            scores = self._loglikelihood_tokens([(None, a, b) for a, b in windows], disable_tqdm=True)
            out.append(sum(s for s, _ in scores))
        return out

    # -- generation ------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests with the same prompt length and settings are decoded together, `batch_size` at a time."""
        plans = [self._generation_plan(context, dict(kw)) for context, kw in (r.args for r in requests)]
        groups: dict[tuple, list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault((len(plan["prompt"]), plan["gen"], plan["key"]), []).append(i)
        out: list[str] = [""] * len(plans)
        bar = tqdm(total=len(plans), disable=disable_tqdm, desc="generate")
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                for i, text in zip(chunk, self._generate_batch([plans[i] for i in chunk]), strict=True):
                    out[i] = text
                bar.update(len(chunk))
        bar.close()
        return out

    def _generation_plan(self, context: str, kw: dict[str, Any]) -> dict[str, Any]:
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        wanted = _int_arg(kw.pop("max_gen_toks", 256), "max_gen_toks")
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 1.0)) if do_sample else 0.0
        top_p = float(kw.pop("top_p", 1.0))
        s = self.streams
        gen = min(math.ceil(wanted / s) * s, (self.max_length - 1) // s * s)  # SBP: S must divide the length
        if gen < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room to generate with {s} streams")
        prompt = self.tok_encode(context)[-(self.max_length - gen) :] if context else []
        return {
            "prompt": prompt,
            "gen": gen,
            "wanted": wanted,
            "until": until,
            "sampling": (temperature, top_p),
            "key": (temperature, top_p, wanted),
        }

    @torch.no_grad()
    def _generate_batch(self, plans: list[dict[str, Any]]) -> list[str]:
        from ..generate import SampleRequest, sample

        p, gen = len(plans[0]["prompt"]), plans[0]["gen"]
        temperature, top_p = plans[0]["sampling"]
        length, b = p + gen, len(plans)
        prompt = torch.tensor([plan["prompt"] for plan in plans], dtype=torch.long).view(b, p)
        request = SampleRequest(
            length,
            batch_size=b,
            prompt=prompt if p else None,
            streams=self.streams,
            steps=self.steps or gen,  # an ancestral sampler's default: one step per generated token
            temperature=temperature,
            top_p=top_p,
            generator=self.generator,
            sample_dtype=torch.float64,
        )
        result = sample(self.model, request)
        texts = []
        for row, plan in zip(result.tokens.cpu().tolist(), plans, strict=True):
            new = row[p:][: plan["wanted"]]
            if self.eot_token_id in new:
                new = new[: new.index(self.eot_token_id)]
            text = self.tok_decode(new)
            for stop in plan["until"]:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            texts.append(text)
        return texts
