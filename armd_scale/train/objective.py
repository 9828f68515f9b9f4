"""What a training step minimises and what validation reports, one object per architecture family.

The loop only knows this interface:

    info = objective.begin_step(step, rows, device)     # draw the step's randomness; schedule state to log
    loss = objective.micro_loss(engine, tokens, micro)  # mean loss of one micro-batch (rows of this rank)
    nll, count = objective.eval_batch(engine, tokens, first_index)
    objective.val_metrics(mean)                         # names and values for the metrics log

Randomness is a pure function of (train.seed, step, global sample index): the whole global batch's
noise is drawn from one per-step generator and each rank takes its rows (as `step_orders` does for
orders). A resumed run therefore draws exactly what an uninterrupted one would, a 2-process run the
same as a single process, and no RNG state needs saving. Validation noise depends on the sample's
position in the validation set only, and is the same at every evaluation, so curves compare like
with like.

Every forward goes through `engine(...)`, never `engine.module`: under ZeRO-3 DeepSpeed gathers the
weights in the forward hooks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from ..config import Config, ConfigError
from ..model import masked_diffusion as md
from ..model import model_class, order_loss, token_nll
from ..model.masks import document_ids
from ..rng import uniform
from .step_orders import draw_step_orders, step_generator

# Mixed into train.seed so the diffusion noise stream is independent of the order stream.
_NOISE_SALT = 0x6D646C6D  # "mdlm"
_VAL_SALT = 0x76616C  # "val"


class Objective(ABC):
    """One architecture family's training loss and validation metric."""

    @abstractmethod
    def begin_step(self, step: int, rows: slice, device: torch.device) -> dict[str, float]:
        """Draw optimizer step `step`'s randomness for this rank's `rows` of the global batch."""

    @abstractmethod
    def micro_loss(self, engine, tokens: torch.Tensor, micro: slice) -> torch.Tensor:
        """Mean per-token loss of one micro-batch; `micro` indexes this rank's rows of the step."""

    @abstractmethod
    def eval_batch(self, engine, tokens: torch.Tensor, first_index: int) -> tuple[float, int]:
        """(summed loss in nats, token count) of one validation batch whose first sample has position
        `first_index` in the validation order."""

    def forward_kwargs(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra model arguments for a batch of windows (the document ids with data.document_mask)."""
        return {}

    @abstractmethod
    def val_metrics(self, mean: float) -> dict[str, float]:
        """Metrics to log for a mean validation loss per token."""

    @abstractmethod
    def val_message(self, mean: float) -> str:
        """The console line for a mean validation loss, naming which likelihood it is."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the run's start message."""


class OrderObjective(Objective):
    """armd and ar: teacher-forced conditionals of the step's orders in one forward pass
    (docs/TRAINING.md, What happens in a step). Validation is the exact left-to-right NLL."""

    def __init__(self, cfg: Config, global_batch: int, eos_id: int | None = None):
        self.cfg = cfg
        self.global_batch = global_batch
        self.order: torch.Tensor | None = None  # this rank's rows of the step (begin_step)
        self.block: torch.Tensor | None = None
        if cfg.data.document_mask and eos_id is None:
            raise ValueError("data.document_mask=true needs the shard set's eos_id (run_data.document_separator)")
        self.eos_id = eos_id if cfg.data.document_mask else None

    def forward_kwargs(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """With data.document_mask, the document ids of each window, found on the device from its EOS
        tokens (model/masks.py, document_ids): the loader's windows need no new field."""
        return {} if self.eos_id is None else {"doc": document_ids(tokens, self.eos_id)}

    def begin_step(self, step: int, rows: slice, device: torch.device) -> dict[str, float]:
        t = self.cfg.train
        order, block, info = draw_step_orders(
            t.order, step=step, global_batch=self.global_batch, seq_len=self.cfg.data.seq_len, seed=t.seed
        )
        # drawn on the host (a CPU generator per step, armd_scale/rng.py), copied without waiting
        self.order = order[rows].to(device, non_blocking=True)
        self.block = block[rows].to(device, non_blocking=True)
        return info

    def micro_loss(self, engine, tokens: torch.Tensor, micro: slice) -> torch.Tensor:
        if self.order is None or self.block is None:
            raise RuntimeError("micro_loss before begin_step: the step's orders were not drawn")
        order = self.order[micro]
        return order_loss(engine(tokens, order, self.block[micro], **self.forward_kwargs(tokens)), tokens, order)

    def eval_batch(self, engine, tokens: torch.Tensor, first_index: int) -> tuple[float, int]:
        order = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        block = order  # l2r: one token per block
        logits = engine(tokens, order, block, **self.forward_kwargs(tokens))  # documents scored apart, as trained
        return float(token_nll(logits, tokens, order).sum()), tokens.numel()

    def val_metrics(self, mean: float) -> dict[str, float]:
        return {"val/nll": mean, "val/ppl": math.exp(min(mean, 50.0))}

    def val_message(self, mean: float) -> str:
        return f"l2r NLL {mean:.4f} (exact), perplexity {math.exp(min(mean, 50.0)):.2f}"

    def describe(self) -> str:
        documents = " document_mask=on" if self.eos_id is not None else ""
        return f"order={self.cfg.train.order.kind}{documents}"


class MaskedDiffusionObjective(Objective):
    """mdlm: the continuous-time MDLM loss with antithetic mask rates across the global batch.
    Validation is the negative ELBO per token (continuous time, or T steps with train.eval_elbo_steps):
    an upper bound on the NLL, logged as `val/elbo`, never comparable as if it were an exact NLL."""

    def __init__(self, cfg: Config, global_batch: int, mask_id: int):
        self.cfg = cfg
        self.global_batch = global_batch
        self.mask_id = mask_id
        self.eval_steps = cfg.train.eval_elbo_steps
        self.rates: torch.Tensor | None = None  # this rank's rows of the step (begin_step)
        self.uniforms: torch.Tensor | None = None
        offset = uniform(generator=step_generator(cfg.train.seed ^ _VAL_SALT, 0), dtype=torch.float64)
        self.val_offset = float(offset)

    @property
    def bound_name(self) -> str:
        return f"negative ELBO ({self.eval_steps}-step)" if self.eval_steps else "negative ELBO (continuous time)"

    def begin_step(self, step: int, rows: slice, device: torch.device) -> dict[str, float]:
        gen = step_generator(self.cfg.train.seed ^ _NOISE_SALT, step)
        rates = md.stratified_rates(self.global_batch, 0, gen)
        uniforms = uniform(self.global_batch, self.cfg.data.seq_len, generator=gen, dtype=torch.float64)
        self.rates = rates[rows].to(device, non_blocking=True)
        self.uniforms = uniforms[rows].to(device, non_blocking=True)
        return {}

    def micro_loss(self, engine, tokens: torch.Tensor, micro: slice) -> torch.Tensor:
        if self.rates is None or self.uniforms is None:
            raise RuntimeError("micro_loss before begin_step: the step's noise was not drawn")
        per_sequence = md.nelbo_estimate(engine, tokens, self.rates[micro], self.uniforms[micro], self.mask_id)
        return per_sequence.sum() / tokens.numel()

    def eval_batch(self, engine, tokens: torch.Tensor, first_index: int) -> tuple[float, int]:
        rates, uniforms = [], []
        for i in range(tokens.shape[0]):  # per-sample noise: a function of the validation position only
            index = first_index + i
            rates.append(md.kronecker_rate(index, self.val_offset, self.eval_steps))
            gen = step_generator(self.cfg.train.seed ^ _VAL_SALT, index + 1)
            uniforms.append(uniform(tokens.shape[1], generator=gen, dtype=torch.float64))
        nelbo = md.nelbo_estimate(engine, tokens, torch.stack(rates), torch.stack(uniforms), self.mask_id)
        return float(nelbo.sum()), tokens.numel()

    def val_metrics(self, mean: float) -> dict[str, float]:
        return {"val/elbo": mean, "val/ppl_bound": math.exp(min(mean, 50.0))}

    def val_message(self, mean: float) -> str:
        return (
            f"{self.bound_name} {mean:.4f} nats/token, perplexity <= {math.exp(min(mean, 50.0)):.2f} "
            "(a bound, not an exact NLL)"
        )

    def describe(self) -> str:
        return "objective=mdlm (continuous-time MDLM loss; train.order ignored)"


def check_documents(cfg: Config) -> None:
    """Refuse, before training, data.document_mask for a model whose forward takes no document ids."""
    if cfg.data.document_mask and not model_class(cfg.model).documents:
        raise ConfigError(
            f"data.document_mask=true needs model.arch=armd (got {cfg.model.arch!r}): only the ARMD forward takes "
            "document ids; set data.document_mask=false"
        )


def make_objective(cfg: Config, global_batch: int, eos_id: int | None = None) -> Objective:
    """The objective the model class declares (`objective`): the order loss, or masked diffusion.
    eos_id: the shard set's document separator, read with data.document_mask."""
    if model_class(cfg.model).objective == "masked_diffusion":
        return MaskedDiffusionObjective(cfg, global_batch, mask_id=cfg.model.vocab_size)
    return OrderObjective(cfg, global_batch, eos_id)
