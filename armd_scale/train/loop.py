"""The training loop, top to bottom.

    train():  processes -> run dir -> data -> set up (model, engine, resume, metrics)
              -> steps until done or stopped -> exit status and the optional end-of-run sample

The steps themselves, once set up, are `steps.py` (`TrainingRun`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import write_atomic
from ..config import Config, ConfigError, dump_config
from ..model import build_model
from . import EXIT_INTERRUPTED, EXIT_PREEMPTED
from .checkpoint import Checkpointer
from .distributed import DistInfo, barrier, init_distributed
from .ema import attach_ema
from .engine import (
    BatchLayout,
    batch_layout,
    build_engine,
    data_parallel_coords,
    repair_optimizer_after_universal_load,
)
from .init_from import initialize_from
from .metrics import MetricsLogger
from .objective import check_documents, make_objective
from .preemption import StopDuringSetup, StopRequest
from .profiler import StepProfiler
from .run_data import DataSources, TrainData, open_train_data
from .run_facts import RunFacts
from .run_lock import run_dir_lock
from .run_status import finish_run, write_exit_status
from .sample_report import print_final_sample
from .schedule import set_lr_for_step
from .steps import TrainerState, TrainingDiverged, TrainingRun
from .validation import check_eval_orders

__all__ = ["TrainingDiverged", "train"]  # TrainingDiverged: what `armd train` and tests catch


def train(cfg: Config, stop: StopRequest | None = None, sources: DataSources | None = None) -> int:
    """Run (or resume) training as described by `cfg`. Returns the process exit code.

    `sources`: the prepared shard sets (the command layer builds a built-in corpus on first use and
    passes them); default: the shard sets as `cfg.data` names them.

    `stop` holds the stop-request handlers; `armd train` installs them before anything else so that a
    signal during set-up is acted on, not lost. Rank 0 holds the run directory's lock throughout; every
    failure after it is taken is recorded in exit_status.json ("failed" and why) before it propagates."""
    own_stop = stop is None
    stop = stop or StopRequest()
    try:
        dist_info = init_distributed(cfg.parallel)
        layout = batch_layout(cfg, dist_info.world_size)
        unscored = check_eval_orders(cfg)  # a likelihood the model cannot score fails now, not at the first validation
        if unscored and dist_info.is_main:
            print(unscored, flush=True)
        check_documents(cfg)
        run_dir = Path(cfg.run.dir).expanduser()
        _refuse_a_file_in_the_way(run_dir)
        with run_dir_lock(run_dir, dist_info, say=print if dist_info.is_main else lambda _: None):
            return _train_locked(cfg, stop, dist_info, layout, run_dir, sources)
    finally:
        if own_stop:
            stop.restore()


def _refuse_a_file_in_the_way(run_dir: Path) -> None:
    """run.dir, or a folder above it, that is a file: a ConfigError naming it once (mkdir said
    `[Errno 17] File exists: PATH` or `[Errno 20] Not a directory: PATH`, of another path)."""
    for path in (run_dir, *run_dir.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == run_dir else f"cannot be created: {path} is a file"
            raise ConfigError(f"run.dir={run_dir} {where}, not a directory")
        if path.exists():
            return


def _train_locked(
    cfg: Config, stop: StopRequest, dist_info: DistInfo, layout: BatchLayout, run_dir: Path, sources: DataSources | None
) -> int:
    run: TrainingRun | None = None
    try:
        _prepare_run_dir(dist_info, run_dir)
        stop.check_setup(dist_info.device, "run directory")
        data = open_train_data(cfg, dist_info, sources)
        if dist_info.is_main:  # the config as resolved, never completed; what the data says goes to run_facts
            write_atomic(run_dir / "config.yaml", dump_config(cfg))
            RunFacts.of(data, dist_info.world_size, cfg.parallel.tp).write(run_dir)
        stop.check_setup(dist_info.device, "data")
        # the model is built from config + facts (model.tokenizer_vocab_size from the shards); checkpoints
        # record this effective config, which is what their readers build the model from
        run = _set_up(data.model_config(), dist_info, layout, run_dir, data, stop)
        stop.set_time_limit(cfg.train.max_minutes)
        try:
            exit_code = run.steps(stop)
        finally:
            run.close()
    except StopDuringSetup as e:
        if dist_info.is_main:
            print(f"{e}; exit {EXIT_PREEMPTED}", flush=True)
            write_exit_status(run_dir, EXIT_PREEMPTED, run.state.step if run else 0, f"{e.reason} during set-up")
        return EXIT_PREEMPTED
    except BaseException as e:  # noqa: BLE001 - recorded for the launcher, then re-raised as it was
        if dist_info.is_main:
            code = EXIT_INTERRUPTED if isinstance(e, KeyboardInterrupt) else 1
            what = "interrupted (a second Ctrl-C)" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            write_exit_status(run_dir, code, run.state.step if run else 0, f"failed: {what}")
        raise
    barrier()
    if dist_info.is_main:  # the status first: an optional sample that fails cannot fail a finished run
        reason = stop.reason if exit_code else "finished"
        sample = ("sample", lambda: print_final_sample(run.engine.module, cfg, data.tokenizer.location, print))
        finish_run(run_dir, exit_code, run.state.step, reason, [sample] if exit_code == 0 else [])
    return exit_code


def _prepare_run_dir(dist_info: DistInfo, run_dir: Path) -> None:
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_exit_status(run_dir, -1, 0, "running")  # a crash leaves this, never a stale 75


def _set_up(
    cfg: Config, dist_info: DistInfo, layout: BatchLayout, run_dir: Path, data: TrainData, stop: StopRequest
) -> TrainingRun:
    """Model, engine and loader; resumed from the newest checkpoint or started (maybe from init_from)."""
    checkpointer = Checkpointer(run_dir, cfg, dist_info, tokenizer=data.tokenizer)
    plan = checkpointer.plan_resume()
    stop.check_setup(dist_info.device, "resume plan")

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (TP shards them)
    model = build_model(cfg.model).to(dist_info.device)
    init_message = None
    if plan.tag is None and cfg.train.init_from:  # a new run starting from trained weights (resume wins)
        init_message = initialize_from(model, cfg, data.tokenizer, dist_info)
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
    ema = attach_ema(engine, optimizer, cfg, checkpointer, plan.tag, metrics.message)
    state.wandb_run_id = metrics.wandb_id
    if plan.tag is not None:
        via = " via universal checkpoint" if plan.universal else ""
        metrics.message(f"resumed from {plan.tag} (step {state.step}){via}")
    if init_message:
        metrics.message(init_message)
    objective = make_objective(cfg, layout.global_batch, eos_id=data.eos_id)
    query_input = f" query_input={cfg.model.query_input}" if cfg.model.arch == "armd" else ""
    metrics.message(
        f"armd_scale: arch={cfg.model.arch}{query_input} params={model.num_params() / 1e6:.2f}M "
        f"world={dist_info.world_size} "
        f"tp={cfg.parallel.tp} zero={cfg.parallel.zero_stage} precision={cfg.parallel.precision} "
        f"global_batch={layout.global_batch} micro={layout.micro_batch} grad_accum={layout.grad_accum} "
        f"seq_len={cfg.data.seq_len} {objective.describe()}"
    )
    profiler = StepProfiler(
        cfg.train.profile,
        run_dir,
        is_main=dist_info.is_main,
        device=dist_info.device,
        first_step=state.step,
        say=metrics.message,
    )
    return TrainingRun(
        cfg=cfg,
        dist=dist_info,
        layout=layout,
        data=data,
        engine=engine,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        batches=iter(loader),
        checkpointer=checkpointer,
        objective=objective,
        metrics=metrics,
        profiler=profiler,
        state=state,
        dp_rank=dp_rank,
        dp_world=dp_world,
        ema=ema,
    )
