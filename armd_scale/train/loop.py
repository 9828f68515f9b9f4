"""The training loop, top to bottom.

    set up processes -> data -> model -> DeepSpeed engine -> resume -> for each optimizer step:
        draw this step's orders or noise -> micro-batches (forward, backward) -> agree on NaN
        -> optimizer step -> metrics -> validation -> checkpoint -> stop if preempted or out of time

What a step minimises and what validation reports depend on the architecture family and live in
`objective.py` (orders and exact l2r NLL for armd/ar; masked-diffusion loss and ELBO for mdlm).

Everything a step does is a function of (config, step, data cursor), so a run stopped at step k and
resumed continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, dump_config
from ..model import build_model
from ..model.flops import peak_flops, training_flops_per_token
from . import EXIT_PREEMPTED
from .checkpoint import Checkpointer
from .data import TrainData, loader_state_of_all_ranks, open_train_data
from .distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier, init_distributed
from .engine import batch_layout, build_engine, data_parallel_coords, repair_optimizer_after_universal_load
from .init_from import initialize_from
from .metrics import MetricsLogger
from .objective import Objective, make_objective
from .preemption import StopRequest
from .profiler import StepProfiler
from .run_status import finish_run, write_exit_status
from .sample_report import print_final_sample
from .schedule import set_lr_for_step


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss."""


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps completed
    bad_steps: int = 0  # consecutive non-finite steps
    loss_ema: float | None = None
    wandb_run_id: str | None = None

    def to_dict(self) -> dict:
        return dict(step=self.step, bad_steps=self.bad_steps, loss_ema=self.loss_ema, wandb_run_id=self.wandb_run_id)


def train(cfg: Config) -> int:
    """Run (or resume) training as described by `cfg`. Returns the process exit code."""
    dist_info = init_distributed(cfg.parallel)
    layout = batch_layout(cfg, dist_info.world_size)
    run_dir = Path(cfg.run.dir).expanduser()
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        write_exit_status(run_dir, -1, 0, "running")  # a crash leaves this, never a stale 75

    data = open_train_data(cfg, dist_info)
    checkpointer = Checkpointer(
        run_dir, cfg, dist_info, tokenizer_sha256=data.tokenizer_sha256, tokenizer_dir=data.tokenizer_dir
    )
    plan = checkpointer.plan_resume()

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (TP shards them)
    model = build_model(cfg.model).to(dist_info.device)
    init_message = None
    if plan.tag is None and cfg.train.init_from:  # a new run starting from trained weights (resume wins)
        init_message = initialize_from(model, cfg, data.tokenizer_sha256, dist_info)
    engine, optimizer, scheduler = build_engine(cfg, model, dist_info, layout, load_universal=plan.universal)
    dp_rank, dp_world = data_parallel_coords(dist_info, cfg.parallel.tp)
    loader = data.train_loader(layout, dp_rank, dp_world, pin_memory=dist_info.device.type == "cuda")

    state = TrainerState()
    if plan.tag is not None:
        client = checkpointer.load(engine, plan)
        state = TrainerState(**client["trainer"])
        loader.load_state_dict(client["loader"])
        set_lr_for_step(optimizer, cfg.train, state.step)  # the schedule follows the config, e.g. a longer train.steps
        if plan.universal:
            repair_optimizer_after_universal_load(optimizer, cfg.train)
    metrics = MetricsLogger(cfg, run_dir, is_main=dist_info.is_main, start_step=state.step, wandb_id=state.wandb_run_id)
    state.wandb_run_id = metrics.wandb_id
    if plan.tag is not None:
        metrics.message(
            f"resumed from {plan.tag} (step {state.step}){' via universal checkpoint' if plan.universal else ''}"
        )
    if init_message:
        metrics.message(init_message)
    objective = make_objective(cfg, layout.global_batch)
    _announce(cfg, model, layout, dist_info, metrics, objective)

    stop = StopRequest(cfg.train.max_minutes)
    flops_per_token = training_flops_per_token(cfg.model, cfg.data.seq_len)
    peak = peak_flops(torch.cuda.get_device_name(), cfg.parallel.precision) if torch.cuda.is_available() else None
    batches = iter(loader)
    profiler = StepProfiler(
        cfg.train.profile,
        run_dir,
        is_main=dist_info.is_main,
        device=dist_info.device,
        first_step=state.step,
        say=metrics.message,
    )
    exit_code = 0
    try:
        profiler.start()
        while state.step < cfg.train.steps:
            t0 = time.perf_counter()
            rows = slice(dp_rank * layout.local_batch, (dp_rank + 1) * layout.local_batch)
            step_info = objective.begin_step(state.step, rows, dist_info.device)  # orders or noise, this rank's rows

            engine.train()
            # Summed on the device: one host sync per step, not per micro-batch.
            nll_sum = torch.zeros((), dtype=torch.float64, device=dist_info.device)
            data_wait = 0.0
            for micro in range(layout.grad_accum):
                tw = time.perf_counter()
                tokens = next(batches).to(dist_info.device, non_blocking=True)
                data_wait += time.perf_counter() - tw
                mrows = slice(micro * layout.micro_batch, (micro + 1) * layout.micro_batch)
                # Per-micro mean; DeepSpeed divides by grad_accum and averages over data-parallel ranks,
                # so the update is the mean over every token of the global batch.
                loss = objective.micro_loss(engine, tokens, mrows)
                nll_sum += loss.detach().double() * tokens.numel()
                engine.backward(loss)
                if micro == layout.grad_accum - 1:
                    # All ranks agree before the optimizer step whether to skip it (NaN/inf anywhere). Read
                    # after the backward is queued, so the GPU computes it while the host waits.
                    bad = not bool(torch.isfinite(nll_sum))
                    optimizer.skip_next = all_reduce_max(1.0 if bad else 0.0, dist_info.device) > 0
                engine.step()
            total_nll, total_tokens = all_reduce_sum(
                [float(nll_sum), tokens.numel() * layout.grad_accum], dist_info.device
            )
            # Every rank of a tensor-parallel group saw the same tokens: count each data-parallel slice once.
            step_loss = total_nll / total_tokens
            state.step += 1
            metrics.advance()
            profiler.step()

            if not math.isfinite(step_loss):
                state.bad_steps += 1
                metrics.message(
                    f"step {state.step}: non-finite loss ({step_loss}); update skipped "
                    f"({state.bad_steps}/{cfg.train.max_bad_steps})"
                )
                if state.bad_steps >= cfg.train.max_bad_steps:
                    raise TrainingDiverged(
                        f"loss was not finite for {state.bad_steps} consecutive steps, the last at step {state.step}; "
                        "lower train.lr, check the data, or raise train.max_bad_steps"
                    )
            else:
                state.bad_steps = 0
                spike = state.loss_ema is not None and step_loss > cfg.train.spike_factor * state.loss_ema
                if spike:
                    metrics.message(
                        f"step {state.step}: loss spike {step_loss:.4f} vs running mean {state.loss_ema:.4f}"
                    )
                state.loss_ema = step_loss if state.loss_ema is None else 0.9 * state.loss_ema + 0.1 * step_loss
                if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps or spike:
                    dt = time.perf_counter() - t0
                    tokens_per_s = layout.global_batch * cfg.data.seq_len / dt
                    values = {
                        "loss": step_loss,
                        "grad_norm": _grad_norm(engine),
                        "lr": scheduler.get_last_lr()[0] if scheduler is not None else cfg.train.lr,
                        "tokens_per_s": tokens_per_s,
                        "tokens_per_s_per_device": tokens_per_s / dist_info.world_size,
                        "step_time_s": dt,
                        "data_wait_s": data_wait,
                        "tokens_seen": state.step * layout.global_batch * cfg.data.seq_len,
                        "loss_spike": spike,
                        **step_info,
                        **_memory(dist_info),
                    }
                    if peak:
                        values["mfu"] = tokens_per_s * flops_per_token / (peak * dist_info.world_size)
                    metrics.log(state.step, values)

            if cfg.train.eval_every and (state.step % cfg.train.eval_every == 0 or state.step == cfg.train.steps):
                val = evaluate(engine, objective, data, cfg, dist_info, dp_rank, dp_world)
                if val is not None:
                    metrics.log(state.step, objective.val_metrics(val))
                    metrics.message(f"step {state.step}: {objective.val_message(val)}")

            finished = state.step >= cfg.train.steps
            stopping = not finished and (stop.should_stop(dist_info.device) or state.step == cfg.train.stop_at_step)
            if stopping and state.step == cfg.train.stop_at_step:
                stop.reason = stop.reason or f"train.stop_at_step={cfg.train.stop_at_step}"
            if finished or stopping or state.step % cfg.train.checkpoint_every == 0:
                checkpointer.save(engine, state.step, trainer=state.to_dict(), loader=loader_state_of_all_ranks(loader))
            if stopping:
                metrics.message(
                    f"stopping at step {state.step} ({stop.reason}); checkpoint saved, exit {EXIT_PREEMPTED}"
                )
                exit_code = EXIT_PREEMPTED
                break
    finally:
        profiler.stop()
        stop.restore()
        metrics.close()
        loader.close()
    barrier()
    if dist_info.is_main:  # the status first: an optional sample that fails cannot fail a finished run
        sample = ("sample", lambda: print_final_sample(engine.module, cfg, data.tokenizer_dir, print))
        reason = stop.reason if exit_code else "finished"
        finish_run(run_dir, exit_code, state.step, reason, [sample] if exit_code == 0 else [])
    return exit_code


@torch.no_grad()
def evaluate(
    engine, objective: Objective, data: TrainData, cfg: Config, dist_info: DistInfo, dp_rank: int, dp_world: int
) -> float | None:
    """The objective's validation loss per token (exact l2r NLL, or a negative ELBO for mdlm) on the
    first `train.eval_batches` validation micro-batches of every rank."""
    micro = cfg.train.micro_batch_size
    loader = data.val_loader(micro, dp_rank, dp_world)
    if loader is None:
        return None
    engine.eval()
    nll, count = 0.0, 0
    try:
        for i, tokens in enumerate(loader):
            if i >= cfg.train.eval_batches:
                break
            first_index = (i * dp_world + dp_rank) * micro  # this batch's position in the validation order
            batch_nll, batch_count = objective.eval_batch(engine, tokens.to(dist_info.device), first_index)
            nll += batch_nll
            count += batch_count
    finally:
        loader.close()
        engine.train()
    total, tokens_total = all_reduce_sum([nll, count], dist_info.device)
    return total / tokens_total if tokens_total else None


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm)


def _memory(dist_info: DistInfo) -> dict[str, float]:
    if dist_info.device.type == "cuda":
        return {"memory/max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30}
    import psutil

    return {"memory/rss_gb": psutil.Process().memory_info().rss / 2**30}


def _announce(cfg: Config, model, layout, dist_info: DistInfo, metrics: MetricsLogger, objective: Objective) -> None:
    metrics.message(
        f"armd_scale: arch={cfg.model.arch} params={model.num_params() / 1e6:.2f}M world={dist_info.world_size} "
        f"tp={cfg.parallel.tp} zero={cfg.parallel.zero_stage} precision={cfg.parallel.precision} "
        f"global_batch={layout.global_batch} micro={layout.micro_batch} grad_accum={layout.grad_accum} "
        f"seq_len={cfg.data.seq_len} {objective.describe()}"
    )
