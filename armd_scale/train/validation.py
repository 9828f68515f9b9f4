"""Validation during training: the objective's own loss per token, and the likelihoods `train.eval_orders`
adds, on the first `train.eval_batches` validation micro-batches of every rank.

Why more than the objective's number. Training an ARMD model is about every order, but its objective's
validation is the left-to-right NLL only: a regression in random order (the study's symmetric neighbour
heads: random-order NLL 4.817 -> 5.325 while l2r looked fine) stays invisible until someone measures it by
hand. `train.eval_orders=[l2r,random,diffusion:64]` scores the same batches under each kind as well, with the
kinds, orders and exact/elbo labels of `armd eval ppl` (model/generation_orders.py, their one home):

    l2r            exact    val/nll, val/ppl (the objective's own, always; dashboards keep their names)
    random         exact    val/nll_random, val/ppl_random: a uniform permutation per sample, single-token
                            blocks; each an exact likelihood of that order's model
    diffusion:T    bound    val/elbo_diffusionT, val/ppl_bound_diffusionT: a T-step masking trajectory per
                            sample, an unbiased estimate of the discrete-time ELBO (an upper bound on the NLL)

Orders are a pure function of (train.seed, kind, the sample's position in the validation order): the same
sample gets the same order at every evaluation, so a curve compares like with like, and a sample's order
does not depend on which rank scores it. Each kind costs one forward pass per validation micro-batch, like l2r.

What a model cannot score is settled before training starts (`check_eval_orders`):
- arch ar takes single-token blocks only (`multi_token_blocks` False): diffusion is refused.
- arch mdlm (objective masked_diffusion) scores none of them, and says so at the start instead of refusing,
  so the paper presets, which list `random` for ARMD, still train the MDLM baseline with the one override
  `model.arch=mdlm` (docs/CONFIGS.md). Its validation is its negative ELBO (val/elbo).
  Through the shared contract its conditionals under an order are a true likelihood, but they cost one
  forward pass per block: seq_len passes per micro-batch for l2r or random, which would make validation
  seq_len times dearer than a training step can pay for; and an exact l2r number labelled val/nll would
  read as comparable to armd's one-pass NLL while measuring a different model (MDLM as an any-order
  autoregressive model). `armd eval ppl` scores them offline where that is wanted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import Config, ConfigError, parse_eval_order
from ..model import model_class, token_nll
from ..model.generation_orders import likelihood_label, likelihood_order
from .distributed import DistInfo, all_reduce_sum
from .objective import Objective
from .run_data import TrainData
from .step_orders import step_generator

# Mixed into train.seed so validation orders are independent of the training orders and noise.
_ORDER_SALT = {"random": 0x72616E64, "diffusion": 0x64696666}  # "rand", "diff"
OBJECTIVE = ""  # the key of the objective's own loss in `evaluate`'s result


@dataclass(frozen=True)
class ValLikelihood:
    """One likelihood `train.eval_orders` adds to validation."""

    kind: str  # random or diffusion (l2r is the objective's own)
    steps: int | None = None  # diffusion steps T

    @property
    def name(self) -> str:
        return self.kind if self.steps is None else f"{self.kind}{self.steps}"

    @property
    def likelihood(self) -> str:
        """'exact' or 'elbo', as `armd eval ppl` labels the same kind."""
        return likelihood_label(self.kind)

    def order(self, index: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(order [N], block [N]) of the validation sample at position `index`: the same at every evaluation."""
        gen = step_generator(seed ^ _ORDER_SALT[self.kind] ^ ((self.steps or 0) << 32), index + 1)
        return likelihood_order(self.kind, seq_len, generator=gen, steps=self.steps)

    def metrics(self, mean: float) -> dict[str, float]:
        ppl = math.exp(min(mean, 50.0))
        if self.likelihood == "exact":
            return {f"val/nll_{self.name}": mean, f"val/ppl_{self.name}": ppl}
        return {f"val/elbo_{self.name}": mean, f"val/ppl_bound_{self.name}": ppl}

    def message(self, mean: float) -> str:
        if self.likelihood == "exact":
            return f"{self.kind}-order NLL {mean:.4f} (exact)"
        return f"diffusion({self.steps}) negative ELBO {mean:.4f} (a bound)"


def val_likelihoods(cfg: Config) -> list[ValLikelihood]:
    """The likelihoods `train.eval_orders` adds to the objective's own, each checked against the model."""
    if check_eval_orders(cfg) is not None:  # mdlm: its ELBO only
        return []
    out = []
    for spec in cfg.train.eval_orders:
        kind, steps = parse_eval_order(spec)
        if kind != "l2r":  # the objective's own (val/nll)
            out.append(ValLikelihood(kind, steps))
    return out


def check_eval_orders(cfg: Config) -> str | None:
    """Refuse, before training, a `train.eval_orders` the model cannot score; return the line to print
    when the model leaves them unscored (mdlm; module docstring)."""
    cls = model_class(cfg.model)
    specs = [parse_eval_order(spec) for spec in cfg.train.eval_orders]
    if specs and cls.objective == "masked_diffusion":
        return (
            f"train.eval_orders={cfg.train.eval_orders} not scored: arch {cfg.model.arch} validates with its "
            "negative ELBO (val/elbo, train.eval_elbo_steps); its conditionals under an order cost one forward pass "
            "per block (seq_len passes per batch); score orders offline with `armd eval ppl`"
        )
    if not cls.multi_token_blocks and any(kind == "diffusion" for kind, _ in specs):
        raise ConfigError(
            f"train.eval_orders={cfg.train.eval_orders}: arch {cfg.model.arch} takes single-token blocks only and "
            "cannot score diffusion trajectories (blocks of several tokens); use l2r and random"
        )
    return None


@torch.no_grad()
def evaluate(
    engine, objective: Objective, data: TrainData, cfg: Config, dist_info: DistInfo, dp_rank: int, dp_world: int
) -> dict[str, float] | None:
    """Loss per token of the objective (key OBJECTIVE: exact l2r NLL, or a negative ELBO for mdlm) and of
    every `val_likelihoods` kind (key: its name), over the first `train.eval_batches` validation
    micro-batches of every rank (summed over ranks); None without a validation set."""
    micro = cfg.train.micro_batch_size
    extra = val_likelihoods(cfg)
    loader = data.val_loader(micro, dp_rank, dp_world)
    if loader is None:
        return None
    engine.eval()
    sums = torch.zeros(len(extra) + 2, dtype=torch.float64, device=dist_info.device)  # objective, extras, tokens
    try:
        for i, tokens in enumerate(loader):
            if i >= cfg.train.eval_batches:
                break
            tokens = tokens.to(dist_info.device)
            first_index = (i * dp_world + dp_rank) * micro  # this batch's position in the validation order
            batch_nll, batch_count = objective.eval_batch(engine, tokens, first_index)
            sums[0] += batch_nll
            sums[-1] += batch_count
            for k, kind in enumerate(extra):
                sums[k + 1] += _order_nll(
                    engine, tokens, kind, first_index, cfg.train.seed, objective.forward_kwargs(tokens)
                )
    finally:
        loader.close()
        engine.train()
    totals = all_reduce_sum(sums.tolist(), dist_info.device)
    if not totals[-1]:
        return None
    means = [t / totals[-1] for t in totals[:-1]]
    return {OBJECTIVE: means[0], **{kind.name: mean for kind, mean in zip(extra, means[1:], strict=True)}}


def _order_nll(
    engine, tokens: torch.Tensor, kind: ValLikelihood, first_index: int, seed: int, extra: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Summed NLL (nats) of a batch, each row under its own sample's order: one forward pass (`extra`: the
    objective's model arguments, e.g. document ids)."""
    b, n = tokens.shape
    rows = [kind.order(first_index + r, n, seed) for r in range(b)]
    order = torch.stack([o for o, _ in rows]).to(tokens.device, non_blocking=True)
    block = torch.stack([k for _, k in rows]).to(tokens.device, non_blocking=True)
    return token_nll(engine(tokens, order, block, **extra), tokens, order).double().sum()


def validation_report(objective: Objective, cfg: Config, result: dict[str, float]) -> tuple[dict[str, float], str]:
    """The metrics to log and the console line (each number named exact or bound) of one `evaluate` result."""
    metrics = objective.val_metrics(result[OBJECTIVE])
    parts = [objective.val_message(result[OBJECTIVE])]
    for kind in val_likelihoods(cfg):
        metrics |= kind.metrics(result[kind.name])
        parts.append(kind.message(result[kind.name]))
    return metrics, "; ".join(parts)
