"""Each ModelConfig field declares its role once (model_config.py); every table is derived from that.

The expected tables are written out here, not recomputed by the code under test: they are the values
each hand-kept table had before it was derived (LEGACY_MODEL_VALUES widened to every field added after
the first checkpoints, see test_legacy_values). A toy option declared in a test reaches all of them
with no other edit.
"""

from __future__ import annotations

import dataclasses

import pytest

from armd_scale.checkpoints.hf_mapping import FIELDS, armd_config, check_exportable
from armd_scale.checkpoints.layout import NON_FUNCTION_FIELDS, SHAPE_FIELDS, function_differences, shape_differences
from armd_scale.checkpoints.report import ConversionError
from armd_scale.config import LEGACY_MODEL_VALUES, ModelConfig, saved_model_fields
from armd_scale.model_config import FUNCTION, ROLES, RUNTIME, SHAPE, declarations, from_hf, hf_names, option

ANY = "any value"
INIT_ONLY = "initialisation only: does not change a trained model's function"
RUNTIME_ONLY = "a runtime choice with the same function: the exported code uses ModelConfig's default"


def test_every_field_declares_a_role():
    plain = [f.name for f in dataclasses.fields(ModelConfig) if "role" not in f.metadata]
    assert plain == []
    assert all(d.role in ROLES for d in declarations())


def test_legacy_values():
    """The old LEGACY_MODEL_VALUES (neighbour_heads, positional_start_init, neighbour_kind, pe_init) and
    the old hf_mapping.QUERY_INPUT_OFF disagreed in scope; the legacy value is now declared on every
    field added after the first checkpoints were written, so both readers read one table."""
    assert LEGACY_MODEL_VALUES == {
        "pe_init": "recency",
        "neighbour_heads": 0,
        "positional_start_table": "shared",
        "positional_start_scope": "all",
        "positional_start_init": "normal",
        "prefix_norm": False,
        "pe_lr_scale": 1.0,
        "prefix_query_table": False,
        "previous_block_input": False,
        "neighbour_kind": "symmetric",
    }


def test_shape_fields():
    assert set(SHAPE_FIELDS) == {
        "arch", "vocab_size", "n_layers", "d_model", "n_heads", "max_seq_len", "n_two_stream_layers", "d_pe",
        "mlp", "mlp_ratio", "tie_embeddings", "positional_start", "neighbour_heads", "neighbour_kind",
        "positional_start_table", "positional_start_scope", "prefix_agg", "prefix_norm", "prefix_query_table",
        "previous_block_input", "pe_lr_scale",
    }  # fmt: skip
    assert len(SHAPE_FIELDS) == len(set(SHAPE_FIELDS))


def test_resume_guard_allow_list():
    assert NON_FUNCTION_FIELDS == {
        "attention_backend", "compile", "init_std", "pe_init_tau", "pe_init", "positional_start_init", "query_input"
    }  # fmt: skip


def test_hf_mapping():
    names = hf_names()
    assert {k: v for k, v in names.items() if k != v} == {"tie_embeddings": "tie_word_embeddings"}
    assert set(ModelConfig.__dataclass_fields__) - set(names) == {"attention_backend", "compile"}
    assert FIELDS == {
        "arch": ("armd", "ar"), "vocab_size": ANY, "n_layers": ANY, "d_model": ANY, "n_heads": ANY,
        "max_seq_len": ANY, "n_two_stream_layers": ANY, "d_pe": ANY, "prefix_agg": ("mean", "sum", "none"),
        "pe_init_tau": INIT_ONLY, "pe_init": INIT_ONLY, "query_input": ANY, "positional_start": (True, False),
        "mlp": ("swiglu", "gelu"), "mlp_ratio": ANY, "tie_embeddings": (True, False), "rope_theta": ANY,
        "norm_eps": ANY, "init_std": INIT_ONLY, "attention_backend": RUNTIME_ONLY, "compile": RUNTIME_ONLY,
        "tokenizer_vocab_size": ANY, "neighbour_heads": ANY, "neighbour_kind": ("symmetric", "directional"),
        "positional_start_table": ("shared", "separate"), "positional_start_scope": ("all", "first_block"),
        "positional_start_init": INIT_ONLY, "prefix_norm": (True, False), "prefix_query_table": (True, False),
        "previous_block_input": (True, False), "pe_lr_scale": ANY,
    }  # fmt: skip


def test_an_exported_config_that_predates_a_field_reads_its_legacy_value():
    """The old ARMDConfig's defaults (QUERY_INPUT_OFF): a config.json without the query-input keys is the
    paper's input."""
    mc = from_hf({"arch": "armd", "n_layers": 2, "tie_word_embeddings": False})
    assert (mc.n_layers, mc.tie_embeddings, mc.neighbour_heads, mc.neighbour_kind) == (2, False, 0, "symmetric")
    assert (mc.positional_start_table, mc.prefix_norm, mc.pe_lr_scale) == ("shared", False, 1.0)


# A toy option: the field below is the only declaration; the module that would use it is the model.
Toy = dataclasses.make_dataclass(
    "Toy",
    [("toy_gate", str, option("on", role=SHAPE, legacy="off", hf="toy_gate_key"))],
    bases=(ModelConfig,),
)


def test_a_toy_option_reaches_every_table_with_no_other_edit():
    old = dataclasses.asdict(ModelConfig())  # a checkpoint saved before the option existed
    now = dataclasses.asdict(Toy())
    # legacy value
    assert saved_model_fields(old, Toy)["toy_gate"] == "off"
    # the shape list (train.init_from) and the resume guard: the old checkpoint is "off", today's default "on"
    assert shape_differences(old, now, Toy) == ["model.toy_gate: checkpoint 'off' vs config 'on'"]
    assert function_differences(old, now, Toy) == ["model.toy_gate: checkpoint 'off' vs config 'on'"]
    assert function_differences(dataclasses.asdict(Toy(toy_gate="off")), {**now, "toy_gate": "off"}, Toy) == []
    # the Hugging Face mapping: exported under its key, read back, and its absence read as the legacy value
    assert armd_config(Toy(toy_gate="x"))["toy_gate_key"] == "x"
    assert check_exportable(Toy(toy_gate="x")) == []
    assert from_hf({**armd_config(Toy(toy_gate="x"))}, Toy).toy_gate == "x"
    assert from_hf({}, Toy).toy_gate == "off"


def test_a_toy_option_by_role():
    """A runtime option is not guarded on resume; one that is not exported is refused by --to hf unless at
    its default; a plain field (no declaration) is guarded and exported under its own name."""
    toy = dataclasses.make_dataclass(
        "Toy2",
        [
            ("kernel", str, option("a", role=RUNTIME, hf=None)),
            ("secret", int, option(0, role=FUNCTION, hf=None)),
            ("plain", int, dataclasses.field(default=1)),
        ],
        bases=(ModelConfig,),
    )
    base = dataclasses.asdict(toy())
    assert function_differences(base, {**base, "kernel": "b"}, toy) == []
    assert function_differences(base, {**base, "secret": 1}, toy) == ["model.secret: checkpoint 0 vs config 1"]
    assert function_differences(base, {**base, "plain": 2}, toy) == ["model.plain: checkpoint 1 vs config 2"]
    assert shape_differences(base, {**base, "secret": 1, "plain": 2}, toy) == []
    assert check_exportable(toy(kernel="b")) == ["model.kernel='b' is a runtime choice: the exported code uses 'a'"]
    with pytest.raises(ConversionError, match=r"model.secret=3: the Hugging Face export code does not implement"):
        check_exportable(toy(secret=3))
    assert armd_config(toy(plain=5))["plain"] == 5 and "secret" not in armd_config(toy())


def test_option_refuses_an_unknown_role():
    with pytest.raises(ValueError, match="role 'shap' is not one of"):
        option(1, role="shap")
