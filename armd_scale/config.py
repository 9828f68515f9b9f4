"""Typed configuration tree for every part of the stack.

One source of truth: a run is fully described by a `Config` (YAML preset + dotted overrides).
The DeepSpeed dict, the data pipeline settings and the checkpoint metadata are all derived from it,
so users never keep two files in sync.

Validation happens at load time and names the offending key, the value and what is allowed, because
a typo in a 3-day run's config should fail in the first second, not at step 40,000.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

# ModelConfig lives in model_config.py (standard library only: the Hugging Face export ships it); its
# names stay importable from here
from .model_config import DEFAULT_QUERY_INPUT as DEFAULT_QUERY_INPUT
from .model_config import QUERY_INPUT_FORMS as QUERY_INPUT_FORMS
from .model_config import ConfigError as ConfigError
from .model_config import ModelConfig as ModelConfig
from .model_config import _at_least, _positive, legacy_values
from .model_config import query_input_form as query_input_form

PRESET_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_PRESET = "tiny-cpu"


# --------------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------------


@dataclass
class OrderConfig:
    """Which generation orders training draws (docs/ARCHITECTURE.md, Contract).
    Parameters unused by a kind are ignored."""

    kind: Literal["l2r", "random", "progressive", "sbp", "diffusion"] = "l2r"
    # progressive
    ar_steps: int = 0
    rho: int = 8
    ramp_end: int = 1
    reading: Literal["scatter", "window"] = "scatter"
    # sbp: S is drawn uniformly from this set at every optimizer step
    streams: list[int] = field(default_factory=lambda: [1, 2, 4])
    # diffusion
    steps: int = 8
    schedule: Literal["loglinear", "cosine"] = "loglinear"

    def validate(self) -> None:
        if self.kind == "progressive":
            if self.ar_steps < 0 or self.rho < 1 or self.ramp_end < self.ar_steps:
                raise ConfigError(
                    "train.order (progressive) needs ar_steps >= 0, rho >= 1 and ramp_end >= ar_steps; got "
                    f"ar_steps={self.ar_steps}, rho={self.rho}, ramp_end={self.ramp_end}"
                )
        if self.kind == "sbp" and (not self.streams or any(s < 1 for s in self.streams)):
            raise ConfigError(f"train.order.streams={self.streams} must be a non-empty list of integers >= 1")
        if self.kind == "diffusion" and self.steps < 1:
            raise ConfigError(f"train.order.steps={self.steps} must be >= 1")

    def params(self) -> dict[str, Any]:
        """The keyword arguments `make_order` takes for this kind."""
        if self.kind == "progressive":
            return dict(ar_steps=self.ar_steps, rho=self.rho, ramp_end=self.ramp_end, reading=self.reading)
        if self.kind == "diffusion":
            return dict(steps=self.steps, schedule=self.schedule)
        return {}


@dataclass
class ProfileConfig:
    """torch.profiler traces of a few optimizer steps on rank 0 (train/profiler.py), under RUN_DIR/profile."""

    # First optimizer step to trace (counted from 1 like the metrics; 0 = no profiling).
    start_step: int = 0
    # Steps traced from start_step on.
    steps: int = 3
    # Steps run under the profiler but not recorded just before start_step (lets kernels and caches settle).
    warmup: int = 1
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False

    def validate(self) -> None:
        if self.start_step < 0 or self.steps < 1 or self.warmup < 0:
            raise ConfigError(
                f"train.profile needs start_step >= 0 (0 = off), steps >= 1 and warmup >= 0; got "
                f"start_step={self.start_step}, steps={self.steps}, warmup={self.warmup}"
            )


@dataclass
class SourceConfig:
    """One shard set of a training mixture (an item of `data.train` given as a list)."""

    # Shard-set URL of a split directory (local path, file://, s3://, ...).
    path: str = ""
    # Share of the mixture's samples (weights are normalised to sum to 1).
    weight: float = 1.0
    # At most this many passes over the source per epoch of the mixture (may be fractional).
    epochs: float = 1.0


@dataclass
class DataConfig:
    """Where tokens come from (docs/DATA.md)."""

    # A shard-set URL (local path, file://, s3://, memory://), a built-in corpus like `builtin:pydoc`, or a
    # mixture: a list of {path, weight, epochs} (docs/DATA.md, "Mixtures").
    train: str | list[SourceConfig] = "builtin:pydoc"
    val: str | None = None
    # Tokenizer directory; built into `cache_dir` automatically for built-in corpora.
    tokenizer: str | None = None
    # Where built-in corpora are tokenized and sharded once; ~ is expanded.
    cache_dir: str = "~/.cache/armd_scale"
    seq_len: int = 128
    # Vocabulary of tokenizers built automatically for built-in corpora.
    vocab_size: int = 512
    seed: int = 1234
    num_workers: int = 0
    prefetch: int = 2
    # A chunk that cannot be read or fails its checksum (after retries): stop, or skip it (docs/DATA.md).
    on_bad_shard: Literal["error", "skip"] = "error"
    # Samples are shuffled within windows of this many chunks of each lane (docs/DATA.md, "Order").
    shuffle_chunks: int = 4
    # Node-local cache of chunks read from remote shards: a directory on a local disk, shared by the node's
    # ranks and jobs (None: no cache), and its size bound in GiB (docs/DATA.md, "Chunk cache").
    chunk_cache_dir: str | None = None
    chunk_cache_gb: float = 20.0
    # Intra-document masking in packed windows (docs/ARCHITECTURE.md, Document masking): documents are
    # found after each EOS of the window (the shards need nothing new) and each is its own any-order
    # problem; nothing attends, aggregates or reads across a boundary. arch armd only.
    document_mask: bool = False

    def validate(self) -> None:
        _positive(self, "seq_len", "vocab_size", "shuffle_chunks", "chunk_cache_gb")
        if self.num_workers < 0 or self.prefetch < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} and data.prefetch={self.prefetch} must be >= 0")
        _at_least(self, 0, "seed")
        if isinstance(self.train, list):
            self._validate_mixture(self.train)

    @staticmethod
    def _validate_mixture(sources: list[SourceConfig]) -> None:
        if not sources:
            raise ConfigError("data.train=[] names no shard set; give a URL or a list of {path, weight, epochs}")
        seen: dict[str, int] = {}
        for i, source in enumerate(sources):
            key = f"data.train[{i}]"
            if not source.path:
                raise ConfigError(f"{key}.path is missing: every mixture source needs the URL of a shard set")
            if source.path.startswith(("builtin:", "synthetic:")):
                raise ConfigError(
                    f"{key}.path={source.path!r}: a mixture takes shard sets only; build it with `armd shards` and "
                    "give the URL of its train split"
                )
            for name in ("weight", "epochs"):
                value = getattr(source, name)
                if not value > 0 or value == float("inf"):
                    raise ConfigError(f"{key}.{name}={value} must be a number > 0")
            if source.path.rstrip("/") in seen:
                raise ConfigError(
                    f"{key}.path={source.path!r} repeats data.train[{seen[source.path.rstrip('/')]}]; "
                    "give each shard set once (weights add up)"
                )
            seen[source.path.rstrip("/")] = i


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoint cadence and guards (docs/TRAINING.md)."""

    steps: int = 300
    global_batch_size: int = 16
    micro_batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    lr_schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    # wsd (warmup-stable-decay): the lr stays at train.lr after warm-up and decays to min_lr_ratio over
    # the last decay_fraction of train.steps, or from optimizer step decay_start when that is set (> 0):
    # the cool-down of a stable phase that was stopped, resumed with a larger train.steps.
    decay_fraction: float = 0.1
    decay_start: int = 0
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # Exponential moving average of the weights (train/ema.py), updated every optimizer step, saved with
    # every checkpoint and read by eval, generate and the exports unless they ask for the raw weights
    # (--raw-weights); validation reports both. 0 = off; the SEDD/MDLM/BD3-LM setup uses 0.9999.
    ema_decay: float = 0.0
    seed: int = 0
    order: OrderConfig = field(default_factory=OrderConfig)
    checkpoint_every: int = 100
    keep_last: int = 2
    # Also keep every M-th step forever (0 = off).
    keep_every: int = 0
    eval_every: int = 100
    eval_batches: int = 8
    # arch=mdlm: validation reports the negative ELBO with this many diffusion steps T (0 = continuous
    # time, the bound the training loss estimates). A bound on the NLL, logged as val/elbo.
    eval_elbo_steps: int = 0
    # Likelihoods validation scores besides the objective's own (docs/TRAINING.md, "Validation in any order"): `random`
    # (uniform orders, exact) and `diffusion:T` (T-step trajectories, an ELBO: a bound). `l2r` (exact, val/nll)
    # is always scored for armd and ar; listing it changes nothing. arch mdlm takes none (its ELBO is its
    # validation), arch ar no diffusion (single-token blocks only).
    eval_orders: list[str] = field(default_factory=list)
    # Samples per method (left to right; SBP with 4 streams where the model decodes blocks in parallel) at each
    # validation, of min(eval_sample_tokens, data.seq_len) tokens, to RUN_DIR/samples.jsonl and wandb (0 = off).
    eval_samples: int = 2
    eval_sample_tokens: int = 64
    # Start a *new* run from these weights (a run dir, checkpoint folder or export dir; e.g. SBP
    # fine-tuning from a pretrained run). Only weights are taken: optimizer, LR schedule, step and data
    # cursor start fresh. Ignored once run.dir has its own checkpoint (resuming wins).
    init_from: str | None = None
    log_every: int = 10
    # Save and exit with code 75 after this many minutes (0 = no limit).
    max_minutes: float = 0.0
    # Tokens of a sample printed when training finishes (0 = off; small runs only, see train/sample_report.py).
    sample_at_end: int = 64
    # Save and exit with code 75 once this step is reached (0 = off): fixed-length job slots, tests.
    stop_at_step: int = 0
    # NaN/inf guard: skip up to this many consecutive bad steps, then stop.
    max_bad_steps: int = 5
    # A loss above spike_factor x its running mean is a spike. spike_action=skip (the default) skips that
    # optimizer step, as PaLM and OLMo-core's skip-step optimizer do: one bad batch costs one update instead of
    # the weights; max_spike_skips spikes in a row mean the weights themselves are bad, and the run stops
    # with the checkpoints since set aside (docs/RELIABILITY.md). spike_action=log only logs it.
    spike_factor: float = 3.0
    spike_action: Literal["skip", "log"] = "skip"
    max_spike_skips: int = 5
    # The same guard on the global gradient norm (pre-clip): a norm more than grad_spike_sigma standard
    # deviations above the mean of the last grad_spike_window accepted norms is a spike (OLMo-core's
    # skip-step rule: 6 sigma over 128 steps, active once half the window is filled). 0 = off. It shares
    # spike_action and the max_spike_skips streak with the loss guard.
    grad_spike_sigma: float = 6.0
    grad_spike_window: int = 128
    # Finite-divergence guard (docs/RELIABILITY.md): a loss more than max(diverge_margin nats,
    # diverge_ratio x its best running mean) above that mean holds checkpoint retention; diverge_steps
    # such steps in a row stop the run as failed and set aside the checkpoints since (0 = off, e.g. for a
    # resume that changes the data or the order kind on purpose).
    diverge_steps: int = 10
    diverge_margin: float = 1.0
    diverge_ratio: float = 0.25
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def validate(self) -> None:
        _positive(self, "steps", "global_batch_size", "micro_batch_size", "checkpoint_every", "log_every", "lr", "eps")
        _positive(self, "eval_batches", "keep_last", "max_bad_steps", "max_spike_skips")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        self._validate_decay()
        if not 0.0 <= self.ema_decay < 1.0:  # 1 would never leave the initial weights
            raise ConfigError(f"train.ema_decay={self.ema_decay} must be in [0, 1) (0 = no EMA of the weights)")
        for name in ("beta1", "beta2"):  # Adam's moment decay rates; 1 or more never forgets, < 0 oscillates
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be in [0, 1)")
        # grad_clip: 0 = no clipping; a negative norm is not a limit (DeepSpeed's ZeRO-0 path would turn it into
        # gradient ascent, ZeRO-1 into no clipping)
        _at_least(self, 0, "warmup_steps", "eval_every", "max_minutes", "eval_elbo_steps", "weight_decay", "grad_clip")
        _at_least(self, 0, "seed", "keep_every", "sample_at_end", "stop_at_step", "eval_samples")
        _positive(self, "eval_sample_tokens")
        specs = [parse_eval_order(spec) for spec in self.eval_orders]
        if len(set(specs)) < len(specs):
            raise ConfigError(f"train.eval_orders={self.eval_orders} names a likelihood twice; give each once")
        _at_least(self, 1, "spike_factor")
        _at_least(self, 0, "grad_spike_sigma")
        _at_least(self, 2, "grad_spike_window")  # a spread needs two norms
        _at_least(self, 0, "diverge_steps", "diverge_margin", "diverge_ratio")
        self.order.validate()
        self.profile.validate()

    def _validate_decay(self) -> None:
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"train.decay_fraction={self.decay_fraction} must be in [0, 1]")
        if self.decay_start and self.lr_schedule != "wsd":
            raise ConfigError(
                f"train.decay_start={self.decay_start} starts the decay of a wsd schedule; "
                f"train.lr_schedule is {self.lr_schedule!r} (set train.lr_schedule=wsd)"
            )
        if not 0 <= self.decay_start < self.steps:
            raise ConfigError(
                f"train.decay_start={self.decay_start} must be 0 (off) or a step before train.steps={self.steps}: "
                "to cool down a stopped stable phase, resume it with a larger train.steps"
            )


def parse_eval_order(spec: str) -> tuple[str, int | None]:
    """(kind, diffusion steps or None) of one `train.eval_orders` entry: `l2r`, `random` or `diffusion:T`."""
    kind, _, steps = str(spec).partition(":")
    if kind in ("l2r", "random") and not steps:
        return kind, None
    if kind == "diffusion" and steps.isdigit() and int(steps) >= 1:
        return kind, int(steps)
    raise ConfigError(
        f"train.eval_orders entry {spec!r} is not a likelihood; give l2r, random or diffusion:T with T >= 1 steps "
        "(e.g. train.eval_orders=[l2r,random,diffusion:64])"
    )


@dataclass
class ParallelConfig:
    """How the model is spread over devices (DeepSpeed ZeRO and AutoTP)."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    tp: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    activation_checkpointing: bool = False
    # Process-group backend; auto = nccl with CUDA, else gloo.
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    # Merged into the generated DeepSpeed config, for DeepSpeed options this tree does not model (flops
    # profiler, comms logger, offload, ...). A key that contradicts one the config sets is an error
    # (train/engine.py); e.g. parallel.deepspeed='{flops_profiler: {enabled: true, profile_step: 5}}'.
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _positive(self, "tp")


@dataclass
class LogConfig:
    """Where metrics go (JSONL always; console on rank 0; wandb on rank 0)."""

    wandb: Literal["off", "offline", "online", "auto"] = "auto"
    project: str = "armd_scale"
    name: str | None = None
    progress_bar: bool = True


@dataclass
class RunConfig:
    """Identity of a run: its directory holds checkpoints, metrics and the resolved config."""

    dir: str = "runs/tiny-cpu"
    name: str | None = None

    def validate(self) -> None:
        if not self.dir.strip():  # "" would train into the current directory
            raise ConfigError(
                f"run.dir={self.dir!r} must name a directory (checkpoints, metrics and config.yaml go there)"
            )


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> Config:
        self.run.validate()
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.parallel.validate()
        if self.model.n_heads % self.parallel.tp:  # each tensor-parallel rank computes n_heads / tp whole heads
            raise ConfigError(
                f"parallel.tp={self.parallel.tp} must divide model.n_heads={self.model.n_heads} (tensor parallelism "
                "splits attention by heads)"
            )
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        if self.train.global_batch_size % self.train.micro_batch_size:
            raise ConfigError(
                f"train.global_batch_size={self.train.global_batch_size} must be a multiple of "
                f"train.micro_batch_size={self.train.micro_batch_size}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(path: str | Path | None) -> Path:
    """A preset name (`owt-small`) or a YAML path; None means the default preset."""
    if path is None:
        path = DEFAULT_PRESET
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    named = PRESET_DIR / f"{path}.yaml"
    if named.is_file():
        return named
    raise ConfigError(f"config '{path}' is neither a YAML file nor a preset name; presets: {', '.join(list_presets())}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a preset or YAML file, apply `key.sub=value` overrides, validate and return the tree."""
    source = resolve_preset(path)
    with open(source) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of config groups, got {type(raw).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return config_from_dict(raw, origin=str(source))


def config_from_dict(raw: dict[str, Any], origin: str = "<dict>") -> Config:
    """Build and validate a Config from a nested dict (a YAML file or a checkpoint's saved config)."""
    try:
        cfg = _build(Config, raw, prefix="")
    except ConfigError as e:
        raise ConfigError(f"{origin}: {e}") from None
    return cfg.validate()


# A checkpoint saves its whole resolved config, so a model field it lacks did not exist when it was
# written; it was trained with that field's value of the time (its `legacy` declaration in
# model_config.py), not today's default.
LEGACY_MODEL_VALUES = legacy_values(ModelConfig)


def saved_model_fields(model: dict[str, Any], fields_of: type | None = None) -> dict[str, Any]:
    """A saved config's `model` mapping with the fields it predates filled with their values of the time
    (LEGACY_MODEL_VALUES, or the legacy declarations of `fields_of`, a ModelConfig subclass); the one
    place both loading and the resume/init_from checks read it through."""
    legacy = LEGACY_MODEL_VALUES if fields_of is None else legacy_values(fields_of)
    return {**{k: v for k, v in legacy.items() if k not in model}, **model}


def saved_config_from_dict(raw: dict[str, Any], origin: str = "<checkpoint>") -> Config:
    """`config_from_dict` for the config saved with a checkpoint: model fields added after it was written
    take the value they had then (LEGACY_MODEL_VALUES), so old checkpoints load as what they are."""
    model = raw.get("model")
    if isinstance(model, dict):
        raw = {**raw, "model": saved_model_fields(model)}
    return config_from_dict(raw, origin)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value (e.g. model.n_layers=4)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a group")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}'; allowed keys under "
            f"'{prefix.rstrip('.') or 'config'}': {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    check_given = getattr(cls, "check_given", None)
    if check_given is not None:
        kwargs = check_given(kwargs)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ refusals name keys relative to the tree's root
        raise ConfigError(str(e)) from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as e:
                errors.append((option, str(e)))
        # a list or mapping that fails inside is best explained by the option of its own shape
        shaped = [msg for option, msg in errors if _shape_matches(option, value)]
        if len(shaped) == 1:
            raise ConfigError(shaped[0])
        raise ConfigError(errors[0][1] if len(errors) == 1 else f"'{key}'={value!r} matches none of {tp}")
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans
            spellings = ("off", "false", "no") if value is False else ("on", "true", "yes")
            value = next((a for a in allowed if a in spellings), value)
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        raise ConfigError(f"'{key}'={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"'{key}'={value!r} must be a mapping with string keys (YAML: {{key: value, ...}})")
        return copy.deepcopy(value)
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and item_tp is not str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}'={value!r} must be a list")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}'={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"'{key}'={value!r} must be an integer")
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"'{key}'={value!r} must be a number")
        if not math.isfinite(number):  # nan passes every comparison a range check makes
            raise ConfigError(f"'{key}'={value!r} must be a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}'={value!r} must be a string")
    if tp is Any:
        return copy.deepcopy(value)
    raise ConfigError(f"'{key}': unsupported config type {tp}")  # pragma: no cover - programming error


def _shape_matches(tp: Any, value: Any) -> bool:
    """Whether `value` is a list for a list type, or a mapping for a dataclass or dict type."""
    if isinstance(value, (list, tuple)):
        return get_origin(tp) is list
    if isinstance(value, dict):
        return dataclasses.is_dataclass(tp) or get_origin(tp) is dict
    return False


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
