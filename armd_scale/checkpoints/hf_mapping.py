"""How an armd_scale model maps onto a Hugging Face transformers model, both ways, as data.

Two layouts:
- `armd` (custom code, `trust_remote_code=True`): armd_scale's own model (the glue in hf_code/ and
  the model modules it imports, shipped by hf_code_files.py) under its parameter names with a
  `model.` prefix; any `armd` model and any `ar` model (its gelu MLP and
  its learned start vector have no stock equivalent).
- `llama` (a stock `LlamaForCausalLM`, no custom code): an `ar` model with the SwiGLU MLP. The
  layers map one to one (attn_norm -> input_layernorm, wq/wk/wv/wo -> q/k/v/o_proj, mlp_norm ->
  post_attention_layernorm, gate/up/down -> gate/up/down_proj, final_norm -> norm; RoPE is the same
  half-split rotation). Llama reads a token embedding at every position, but our AR model's first
  input is the learned start vector s: s becomes the embedding row of one added token, BOS, with id
  T (the tokenizer's size; padded ids past T are dropped), and the tokenizer puts BOS in front of
  every text. Llama position k then sees [BOS, x_0, ..., x_{k-1}] exactly as our model sees
  [s, x_0, ..., x_{k-1}]. The output matrix keeps T real rows plus a zero row for BOS (logit 0), so
  embeddings are stored untied; score with logits[..., :T] (BOS is suppressed in generation).

The `armd` layout ships the package's own model modules (hf_code_files.py), so every model option
the package implements is implemented there too. What this module decides per field comes from the
field's declaration in model_config.py (`FIELDS`, derived): its config.json key, the values the
export accepts (hf_values, else every value of its type) and whether it only matters at
initialisation or at run time. A field with no config.json key (hf=None) is refused unless it has its
default, and the exporter's logit check decides the rest: an option never exports wrong code silently.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import torch

from ..model import model_class
from ..model.layers import mlp_hidden
from ..model_config import DERIVED, INIT, RUNTIME, ModelConfig, declarations, to_hf
from ..safe_paths import contained_path
from .integrity import CorruptCheckpointError
from .report import ConversionError

ANY = "any value"
INIT_ONLY = "initialisation only: does not change a trained model's function"
RUNTIME_ONLY = "a runtime choice with the same function: the exported code uses ModelConfig's default"


def export_rules(cls: type | None = None) -> dict[str, tuple[Any, ...] | str]:
    """{field: the values the export accepts, or a sentence saying why any value is fine}, from the
    declarations of ModelConfig (or `cls`, a subclass)."""
    hints = typing.get_type_hints(cls or ModelConfig)
    rules: dict[str, tuple[Any, ...] | str] = {}
    for d in declarations(cls):
        tp = hints[d.name]
        if d.role == INIT:
            rules[d.name] = INIT_ONLY
        elif d.role == RUNTIME:
            rules[d.name] = RUNTIME_ONLY
        elif d.role == DERIVED:  # a name for a combination of fields, each of which is checked itself
            rules[d.name] = ANY
        elif d.hf_values is not None:
            rules[d.name] = d.hf_values
        elif get_origin(tp) is Literal:
            rules[d.name] = get_args(tp)
        elif tp is bool:
            rules[d.name] = (True, False)
        else:
            rules[d.name] = ANY
    return rules


FIELDS = export_rules()
LLAMA_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def check_exportable(mc: ModelConfig) -> list[str]:
    """Refuse, naming the field, a model the exported code would not reproduce; returns notes."""
    notes = []
    rules = FIELDS if type(mc) is ModelConfig else export_rules(type(mc))
    for d in declarations(type(mc)):
        value = getattr(mc, d.name)
        rule = rules[d.name]
        if d.hf is None and d.role not in (INIT, RUNTIME) and value != d.default:
            raise ConversionError(
                f"model.{d.name}={value!r}: the Hugging Face export code does not implement this model option "
                "(it has no config.json key); export with --to export instead"
            )
        if isinstance(rule, tuple) and value not in rule:
            supported = ", ".join(repr(v) for v in rule)
            raise ConversionError(
                f"model.{d.name}={value!r} has no Hugging Face export (supported: {supported}); "
                "use --to export, which armd_scale loads"
            )
        if d.hf is None and d.role == RUNTIME and value != d.default:
            notes.append(f"model.{d.name}={value!r} is a runtime choice: the exported code uses {d.default!r}")
    return notes


def llama_incompatibility(mc: ModelConfig) -> str | None:
    """Why this model cannot be a stock LlamaForCausalLM (None: it can)."""
    if not model_class(mc).causal_lm:
        return f"arch {mc.arch} is not a plain causal transformer"
    if mc.mlp != "swiglu":
        return f"model.mlp={mc.mlp}: Llama's MLP is gated (SwiGLU)"
    return None


def real_vocab(mc: ModelConfig) -> int:
    return mc.tokenizer_vocab_size or mc.vocab_size


def armd_config(mc: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of hf_code's ARMDConfig: every exported field under its config.json key."""
    return to_hf(mc)


def llama_config(mc: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of transformers' LlamaConfig (BOS = id T, vocabulary T + 1)."""
    t = real_vocab(mc)
    return {
        "vocab_size": t + 1,
        "hidden_size": mc.d_model,
        "intermediate_size": mlp_hidden(mc.d_model, mc.mlp_ratio, mc.mlp),
        "num_hidden_layers": mc.n_layers,
        "num_attention_heads": mc.n_heads,
        "num_key_value_heads": mc.n_heads,
        "head_dim": mc.d_model // mc.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": mc.max_seq_len,
        "rms_norm_eps": mc.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": mc.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": t,
    }


def to_armd_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in state.items()}


def from_armd_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def to_llama_state(state: dict[str, torch.Tensor], mc: ModelConfig) -> dict[str, torch.Tensor]:
    t = real_vocab(mc)
    embed = state["embed.weight"]
    head = state.get("lm_head.weight", embed)
    out = {
        "model.embed_tokens.weight": torch.cat([embed[:t], state["start"][None].to(embed.dtype)]),
        "lm_head.weight": torch.cat([head[:t], torch.zeros(1, head.shape[1], dtype=head.dtype)]),
        "model.norm.weight": state["final_norm.weight"],
    }
    for i in range(mc.n_layers):
        for ours, theirs in LLAMA_MAP.items():
            out[f"model.layers.{i}.{theirs}"] = state[f"layers.{i}.{ours}"]
    return {k: v.contiguous() for k, v in out.items()}


def from_llama_state(state: dict[str, torch.Tensor], mc: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameters from a Llama export; padded vocabulary rows (never read) come back as zeros."""
    t = real_vocab(mc)
    embed = state["model.embed_tokens.weight"]
    if embed.shape[0] != t + 1:
        raise ConversionError(f"model.embed_tokens.weight has {embed.shape[0]} rows, expected {t + 1} (T + BOS)")

    def padded(rows: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(mc.vocab_size - t, rows.shape[1], dtype=rows.dtype)
        return torch.cat([rows, pad])

    out = {
        "embed.weight": padded(embed[:t]),
        "start": embed[t].clone(),
        "final_norm.weight": state["model.norm.weight"],
    }
    head = state["lm_head.weight"][:t]
    if not mc.tie_embeddings:
        out["lm_head.weight"] = padded(head)
    elif not torch.equal(head, embed[:t]):
        raise ConversionError(
            "lm_head.weight differs from model.embed_tokens.weight, but the run ties them (model.tie_embeddings): "
            "the folder's weights were changed after export"
        )
    for i in range(mc.n_layers):
        for ours, theirs in LLAMA_MAP.items():
            out[f"layers.{i}.{ours}"] = state[f"model.layers.{i}.{theirs}"]
    return out


def verify_hf_folder(folder: Path) -> None:
    """Compare every file a `--to hf` folder's armd_scale.json lists (key 'files': size and SHA-256,
    the format of an export's config.json) with the folder: CorruptCheckpointError naming the first
    damaged file. A folder written before the list existed has none and passes."""
    from .integrity import verify
    from .layout import FILES, HF_META, files_key

    meta_file = Path(folder) / HF_META
    if not meta_file.is_file():  # the exporter's own read-back, before the record is written
        return
    try:
        record = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"{meta_file} is not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise CorruptCheckpointError(f"{meta_file} must be a JSON object")
    verify(Path(folder), record.get(FILES), named_by=files_key(HF_META))


def expected_hf_shapes(layout: str, mc: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} that the safetensors of a `layout` folder hold for model config `mc`,
    from the model built on the meta device (no memory): what the folder's config claims."""
    from ..model import build_model
    from .model_io import tied_aliases

    with torch.device("meta"):
        model = build_model(mc)
    aliases = tied_aliases(model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in aliases}
    if layout == "armd":
        return {f"model.{k}": shape for k, shape in ours.items()}
    t, d = real_vocab(mc), mc.d_model
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (t + 1, d),
        "lm_head.weight": (t + 1, d),
        "model.norm.weight": ours["final_norm.weight"],
    }
    for i in range(mc.n_layers):
        for mine, theirs in LLAMA_MAP.items():
            out[f"model.layers.{i}.{theirs}"] = ours[f"layers.{i}.{mine}"]
    return out


def check_hf_shapes(folder: Path, layout: str, mc: ModelConfig, found: dict[str, tuple[int, ...]]) -> None:
    """Refuse (CorruptCheckpointError) safetensors whose tensor names or shapes are not the ones the
    folder's config describes, before a model of the config's size is built: a config is input, and a
    small folder must not make a reader allocate the huge model its config claims."""
    if layout == "llama":
        t = real_vocab(mc)
        if mc.vocab_size - t > max(t, 1024):  # padded rows are not in the file: bound what the config adds
            raise CorruptCheckpointError(
                f"{folder}: the config pads a vocabulary of {t} ids to model.vocab_size={mc.vocab_size}, more than "
                "the weights can describe; refusing to build that model"
            )
    if layout not in ("armd", "llama"):
        raise ConversionError(f"{folder}: unknown layout {layout!r} (expected 'armd' or 'llama')")
    expected = expected_hf_shapes(layout, mc)
    if found == expected:
        return
    claimed = sum(_numel(s) for s in expected.values())
    held = sum(_numel(s) for s in found.values())
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: weights {found[k]} vs config {expected[k]}"
        for k in sorted(expected)
        if k in found and found[k] != expected[k]
    ]
    details = "; ".join(
        part
        for part in (
            f"missing {_few(missing)}" if missing else "",
            f"unexpected {_few(unexpected)}" if unexpected else "",
            f"shape mismatches {_few(shapes)}" if shapes else "",
        )
        if part
    )
    raise CorruptCheckpointError(
        f"{folder}: the weights do not fit the folder's config, which describes a model of {claimed:,} parameters "
        f"while the safetensors hold {held:,} ({details}); refusing to build the model"
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _few(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def read_hf_state(folder: Path, layout: str, mc: ModelConfig) -> dict[str, torch.Tensor]:
    """armd_scale's parameters from the safetensors of a `--to hf` folder (one file or an index of shards).

    Every file the folder's armd_scale.json lists is verified first (size and SHA-256), and the tensor
    names and shapes in the safetensors headers are compared with the folder's config before any
    tensor is read or any config-sized tensor is made."""
    from safetensors import safe_open

    verify_hf_folder(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index}: 'weight_map' must map tensor names to file names")
        # the names are input: each must be a regular file inside the folder (safe_paths)
        named_by = f"{index.name} key 'weight_map'"
        files = [contained_path(folder, n, named_by=named_by) for n in sorted(set(weight_map.values()), key=str)]
    else:
        files = [folder / "model.safetensors"]
    found: dict[str, tuple[int, ...]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            found.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    check_hf_shapes(folder, layout, mc, found)
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(str(path)))
    if layout == "llama":
        return from_llama_state(state, mc)
    return from_armd_state(state)
