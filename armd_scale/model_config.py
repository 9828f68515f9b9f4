"""The model's options (`ModelConfig`), each declared once with its role, and the tables derived from them.

Every field is declared with `option(default, role=..., legacy=..., hf=...)`:

- role: what a change of the field means for trained weights, which decides which checks guard it.
  SHAPE (parameter shapes or what the stored weights mean: `train.init_from` refuses another value),
  FUNCTION (same weights, another function: a resume refuses another value), RUNTIME (how the same
  function is evaluated), INIT (how weights are first drawn, read only when a run starts), DERIVED
  (a name for a combination of other fields, which are checked themselves).
- legacy: the value a checkpoint written before the field existed was trained with (a saved config
  lacks the key); omitted for fields every checkpoint records.
- hf: the key in an exported transformers config.json (default: the field's name; None: not exported);
  hf_values: the values the Hugging Face export accepts, where it accepts fewer than the type allows.

`config.LEGACY_MODEL_VALUES`, the resume guard and the shape list (checkpoints/layout.py) and the
Hugging Face mapping (checkpoints/hf_mapping.py, hf_code/) are all derived from these declarations, so
adding an option touches its field and the module that uses it, nothing else. A field declared without
`option` (a plain dataclass field in a subclass) counts as FUNCTION, exported under its own name.

This module imports the standard library only: the Hugging Face export ships it beside the model's
own modules (checkpoints/hf_code_files.py), where armd_scale is not installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

SHAPE = "shape"
FUNCTION = "function"
RUNTIME = "runtime"
INIT = "initialisation"
DERIVED = "derived"
ROLES = (SHAPE, FUNCTION, RUNTIME, INIT, DERIVED)
GUARDED_ROLES = (SHAPE, FUNCTION)  # a resume refuses a change of these (checkpoints/layout.py)
_SAME = "<the field's name>"


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the key, the value and what is allowed."""


def option(
    default: Any,
    *,
    role: str,
    legacy: Any = dataclasses.MISSING,
    hf: str | None = _SAME,
    hf_values: tuple[Any, ...] | None = None,
) -> Any:
    """A ModelConfig field with its declaration (module docstring) in the dataclass field's metadata."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return dataclasses.field(
        default=default, metadata={"role": role, "legacy": legacy, "hf": hf, "hf_values": hf_values}
    )


@dataclass(frozen=True)
class Declaration:
    """One field's declaration, as read back from its metadata (defaults for a plain field)."""

    name: str
    default: Any
    role: str
    legacy: Any  # dataclasses.MISSING: every checkpoint records the field
    hf: str | None
    hf_values: tuple[Any, ...] | None

    @property
    def missing_value(self) -> Any:
        """What a saved config or config.json that lacks the key means: its legacy value, else the default."""
        return self.default if self.legacy is dataclasses.MISSING else self.legacy


def declarations(cls: type | None = None) -> list[Declaration]:
    """Every field of `cls` (ModelConfig or a subclass) with its declaration, in field order."""
    out = []
    for f in dataclasses.fields(cls or ModelConfig):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        hf = meta.get("hf", _SAME)
        out.append(
            Declaration(
                name=f.name,
                default=default,
                role=meta.get("role", FUNCTION),
                legacy=meta.get("legacy", dataclasses.MISSING),
                hf=f.name if hf == _SAME else hf,
                hf_values=meta.get("hf_values"),
            )
        )
    return out


def legacy_values(cls: type | None = None) -> dict[str, Any]:
    """{field: value of the time} for fields added after checkpoints were first saved."""
    return {d.name: d.legacy for d in declarations(cls) if d.legacy is not dataclasses.MISSING}


def fields_with_role(*roles: str, cls: type | None = None) -> tuple[str, ...]:
    return tuple(d.name for d in declarations(cls) if d.role in roles)


def hf_names(cls: type | None = None) -> dict[str, str]:
    """{field: its config.json key} for every exported field."""
    return {d.name: d.hf for d in declarations(cls) if d.hf is not None}


def to_hf(mc: Any) -> dict[str, Any]:
    """The exported config.json keys and values of a ModelConfig."""
    return {hf: getattr(mc, name) for name, hf in hf_names(type(mc)).items()}


def from_hf(values: Mapping[str, Any], cls: type | None = None) -> Any:
    """The ModelConfig an exported config describes. A key it lacks (written before the field existed)
    takes the field's legacy value, else its default; fields not exported take their default."""
    cls = cls or ModelConfig
    kwargs = {d.name: values.get(d.hf, d.missing_value) for d in declarations(cls) if d.hf is not None}
    return cls(**ModelConfig.check_given(kwargs))


# --------------------------------------------------------------------------------------------------
# The model's options
# --------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """Shape and flavour of the network (docs/ARCHITECTURE.md, Forward pass and Baselines). Each field's
    role says what changing it means for trained weights (module docstring)."""

    arch: Literal["armd", "ar", "mdlm"] = option("armd", role=SHAPE, hf_values=("armd", "ar"))
    vocab_size: int = option(512, role=SHAPE)
    n_layers: int = option(4, role=SHAPE)
    d_model: int = option(128, role=SHAPE)
    n_heads: int = option(4, role=SHAPE)
    max_seq_len: int = option(128, role=SHAPE)
    # Two-stream (strictly causal) layers at the bottom; None = n_layers // 2 as in the paper.
    n_two_stream_layers: int | None = option(None, role=SHAPE)
    # Width of the learned positional table used by prefix aggregation.
    d_pe: int = option(64, role=SHAPE)
    # Prefix aggregation: a plain sum, as in the paper (with the recency-kernel PE init below), a mean,
    # or none (G0 without the paper's aggregate; only sensible with neighbour_heads > 0).
    prefix_agg: Literal["mean", "sum", "none"] = option("sum", role=SHAPE)
    # Length scale of the exponential recency kernel the PE table starts as (0 = random normal init).
    pe_init_tau: float = option(2.0, role=INIT)
    # The prefix kernel <PE_n, PE_i> the table starts as: recency (the default, exp(-|n - i| / pe_init_tau))
    # or shift (weight ~1 on i = n - 1 and little elsewhere, AR's input shift under l2r; sharp while
    # d_pe >= max_seq_len / 2; model/pe_init.py), the start that makes query_input=paper level with AR.
    # Our choice either way: the paper does not say how its table starts. Measured in
    # docs/REPRODUCTION.md, "The paper's model and ours".
    pe_init: Literal["recency", "shift"] = option("recency", role=INIT, legacy="recency")
    # Add a learned projection of the target's own PE row to the start vector s, so first-block
    # queries know their position (part of query_input=neighbour; see positional_start_init).
    positional_start: bool = option(True, role=SHAPE)
    mlp: Literal["swiglu", "gelu"] = option("swiglu", role=SHAPE)
    # Hidden width of the MLP as a multiple of d_model (SwiGLU uses 2/3 of it per branch, rounded).
    mlp_ratio: float = option(4.0, role=SHAPE)
    tie_embeddings: bool = option(True, role=SHAPE, hf="tie_word_embeddings")
    rope_theta: float = option(10000.0, role=FUNCTION)
    norm_eps: float = option(1e-6, role=FUNCTION)
    init_std: float = option(0.02, role=INIT)
    attention_backend: Literal["sdpa", "flex", "flash", "auto"] = option("sdpa", role=RUNTIME, hf=None)
    # torch.compile the model for training (in place: parameter names and checkpoints are unchanged).
    # Not a shape key: a run may resume with it switched on or off. See docs/GPU.md.
    compile: bool = option(False, role=RUNTIME, hf=None)
    # Ids >= this are vocabulary padding (vocab_size rounded up for GPU efficiency, e.g. GPT-2's 50,257
    # -> 50,304): their logits are the dtype's minimum, so they get no probability in training,
    # evaluation or sampling. None = no padding. The trainer sets it from the shards' tokenizer.
    tokenizer_vocab_size: int | None = option(None, role=FUNCTION)
    # -- The query stream's input G0 (docs/ARCHITECTURE.md, Forward pass; measured in docs/REPRODUCTION.md,
    # "The paper's model and ours"). One switch names the form: `paper` is the paper's s + prefix
    # aggregation (with pe_init=shift it is level with AR left to right), `neighbour` (the default) ours:
    # + directional neighbour heads + the positional start, `custom` any other mix of the fields below.
    # Naming a form fills every field of QUERY_INPUT_FORMS[form] that is left at its default; a config
    # that names a form and sets one of its fields otherwise is refused. After construction the field
    # names the form the fields match.
    query_input: Literal["paper", "neighbour", "custom"] = option("neighbour", role=DERIVED)
    # Content-free softmax heads over the revealed tokens, scored by relative position only, added to
    # G0 (model/neighbour.py): a sharp path to the nearest revealed token (AR's input shift under l2r).
    neighbour_heads: int = option(4, role=SHAPE, legacy=0)
    # Which table the positional start W_s PE[pos n] reads: the prefix-aggregation table, or its own.
    positional_start_table: Literal["shared", "separate"] = option("shared", role=SHAPE, legacy="shared")
    # Which queries get the positional start: all, or only those with nothing revealed before them.
    positional_start_scope: Literal["all", "first_block"] = option("all", role=SHAPE, legacy="all")
    # Initial W_s: zeros (G0 starts as without it) or normal(init_std) like every matrix, which swamps
    # the content of G0 at the start and cost 0.4-0.5 nats/token on tiny-cpu.
    positional_start_init: Literal["normal", "zero"] = option("zero", role=INIT, legacy="normal")
    # RMS-normalise the prefix-aggregation sum of each query (to the embeddings' initial scale).
    prefix_norm: bool = option(False, role=SHAPE, legacy=False)
    # Learning-rate multiplier of the PE table(s), by reparametrisation (stored = table / scale);
    # 0 freezes them at their initial value.
    pe_lr_scale: float = option(1.0, role=SHAPE, legacy=1.0)
    # A separate query-side PE table for the prefix sum, <PEq[pos n], PE[pos i]>, initialised as the
    # key table shifted by one position: an asymmetric kernel peaked on the previous position that
    # keeps the O(1) decoding state (pe_init=shift reaches a similar start with the paper's one table).
    prefix_query_table: bool = option(False, role=SHAPE, legacy=False)
    # Add the mean embedding of the immediately preceding block to G0: a block-level form of the paper's
    # rejected "Shift" (q_n = q_{n-1}, AR's input under l2r). Averaging the whole previous block keeps
    # permutation equivariance, and the contract tests run it. A diagnostic, not an input we recommend:
    # it is not the paper's, and it was measured left to right only (docs/REPRODUCTION.md).
    previous_block_input: bool = option(False, role=SHAPE, legacy=False)
    # Neighbour heads: directional (heads alternate left/right of the query and may attend to "nothing",
    # so under an order unlike training a head gives the same kind of token or nothing), or symmetric
    # (head h scores -4^(1-h)|distance|, either side alike; a row always sums to 1). Equal left to right
    # on tiny-cpu; directional is better in any order (random-order NLL 4.67 vs 5.33 after progressive
    # training, 4.15 vs 4.39 after random-order training, old loader). model/neighbour.py.
    neighbour_kind: Literal["symmetric", "directional"] = option("directional", role=SHAPE, legacy="symmetric")

    def __post_init__(self) -> None:
        form = QUERY_INPUT_FORMS.get(self.query_input)
        if form is not None:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in form.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
            clashes = [f"model.{k}={getattr(self, k)!r}" for k, v in form.items() if getattr(self, k) != v]
            if clashes and self.query_input != DEFAULT_QUERY_INPUT:
                raise ConfigError(
                    f"model.query_input={self.query_input} fixes {', '.join(f'{k}={v!r}' for k, v in form.items())}; "
                    f"{', '.join(clashes)} contradicts it (use model.query_input=custom to mix options)"
                )
        self.query_input = query_input_form(self)

    @staticmethod
    def check_given(raw: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments to build from. A config file or override that names a form and also sets
        one of its fields to another value is refused, even where that value is the field's default
        (which __post_init__ cannot tell from a value left alone). A mapping that holds every field of
        the form is a saved or dumped config: there the fields decide, and the name is derived from
        them again (so a saved config edited by hand is read as the fields it holds)."""
        form = QUERY_INPUT_FORMS.get(str(raw.get("query_input")))
        if form is None:
            return raw
        if set(form) <= set(raw):
            return {k: v for k, v in raw.items() if k != "query_input"}
        for name in sorted(set(raw) & set(form)):
            if raw[name] != form[name]:
                raise ConfigError(
                    f"model.{name}={raw[name]!r} contradicts model.query_input={raw['query_input']}, which sets "
                    f"{name}={form[name]!r} (use model.query_input=custom to mix options)"
                )
        return raw

    def validate(self) -> None:
        _positive(self, "vocab_size", "n_layers", "d_model", "n_heads", "max_seq_len", "d_pe")
        if self.tokenizer_vocab_size is not None and not 1 <= self.tokenizer_vocab_size <= self.vocab_size:
            raise ConfigError(
                f"model.tokenizer_vocab_size={self.tokenizer_vocab_size} must be in [1, model.vocab_size="
                f"{self.vocab_size}]: a model cannot be smaller than its tokenizer"
            )
        if self.neighbour_heads < 0:
            raise ConfigError(f"model.neighbour_heads={self.neighbour_heads} must be >= 0 (0 = off)")
        if self.pe_lr_scale < 0:
            raise ConfigError(f"model.pe_lr_scale={self.pe_lr_scale} must be >= 0 (0 = frozen PE table)")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"model.d_model / model.n_heads = {self.d_model // self.n_heads} must be even (RoPE)")
        if self.n_two_stream_layers is not None and not 1 <= self.n_two_stream_layers <= self.n_layers:
            raise ConfigError(
                f"model.n_two_stream_layers={self.n_two_stream_layers} must be in "
                f"[1, model.n_layers={self.n_layers}] or null (= n_layers // 2)"
            )
        if self.arch == "armd" and self.n_two_stream_layers is None and self.n_layers < 2:
            raise ConfigError("model.n_layers must be >= 2 for arch=armd (half are two-stream layers)")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"model.mlp_ratio={self.mlp_ratio} must be > 0")
        _positive(self, "rope_theta", "norm_eps", "init_std")
        _at_least(self, 0, "pe_init_tau")

    @property
    def two_stream_layers(self) -> int:
        if self.n_two_stream_layers is not None:
            return self.n_two_stream_layers
        return max(1, self.n_layers // 2)


# The named forms of the query stream's input (ModelConfig.query_input): the fields each one fixes.
QUERY_INPUT_FORMS: dict[str, dict[str, Any]] = {
    # Karami & Ghodsi: G0 = s + sum over strictly earlier blocks of <PE_n, PE_i> X0[i].
    "paper": {
        "neighbour_heads": 0,
        "positional_start": False,
        "prefix_agg": "sum",
        "prefix_norm": False,
        "prefix_query_table": False,
        "previous_block_input": False,
    },
    # Ours, the default: the paper's sum + 4 directional neighbour heads + the positional start
    # W_s PE[pos n] (W_s = 0 at the start); docs/ARCHITECTURE.md says what each adds and
    # docs/REPRODUCTION.md what it measured.
    "neighbour": {
        "neighbour_heads": 4,
        "neighbour_kind": "directional",
        "positional_start": True,
        "positional_start_init": "zero",
        "positional_start_table": "shared",
        "positional_start_scope": "all",
        "prefix_agg": "sum",
        "prefix_norm": False,
        "prefix_query_table": False,
        "previous_block_input": False,
    },
}
DEFAULT_QUERY_INPUT = "neighbour"


def query_input_form(cfg: ModelConfig) -> Literal["paper", "neighbour", "custom"]:
    """The named form whose fields cfg has, else 'custom'."""
    names: tuple[Literal["paper", "neighbour"], ...] = ("paper", "neighbour")
    for name in names:
        if all(getattr(cfg, k) == v for k, v in QUERY_INPUT_FORMS[name].items()):
            return name
    return "custom"


def _group(obj: Any) -> str:
    return type(obj).__name__.replace("Config", "").lower()


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{_group(obj)}.{name}={value} must be > 0")


def _at_least(obj: Any, floor: float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < floor:
            raise ConfigError(f"{_group(obj)}.{name}={value} must be >= {floor}")
