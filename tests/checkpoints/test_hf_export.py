"""`armd convert --to hf`: a transformers folder that loads without armd_scale and reproduces the model.

The decisive test loads the folder in a fresh virtual environment that has transformers and torch
but not armd_scale (isolated_python.py; `import armd_scale` fails there, checked), run from the
export folders' parent with PYTHONPATH cleared, with transformers' own AutoModelForCausalLM /
AutoTokenizer, and compares what it computes with armd_scale's model here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.hf_mapping import check_exportable
from armd_scale.checkpoints.report import ConversionError
from armd_scale.checkpoints.source import open_source
from armd_scale.checkpoints.weights import full_state
from armd_scale.cli import main
from armd_scale.config import ModelConfig
from armd_scale.model_config import SHAPE, option
from armd_scale.pretrained import load_pretrained
from tests.checkpoints.isolated_python import clean_env, python_without_armd_scale

transformers = pytest.importorskip("transformers", reason="--to hf needs the transformers extra")

TEXTS = ["The module provides functions.", "  indented\n\tx = 1\n", "a   b", "ünïcödé ✓", "<|endoftext|> </s> [SEP]"]

ISOLATED = r"""
import json, sys
try:
    import armd_scale
    blocked = False
except ModuleNotFoundError:
    blocked = True
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

texts = json.loads(sys.argv[1])
results = []
for folder, inputs, out in zip(*[iter(sys.argv[2:])] * 3):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    given = torch.load(inputs, weights_only=True)
    x = given["tokens"]
    pos = torch.arange(x.shape[1]).expand_as(x)
    with torch.no_grad():
        contract = model(x, pos, pos)
        any_order = model(x, given["order"], given["block"])
        standard = model(input_ids=x[:, :-1]).logits
        generated = model.generate(x[:1, :5], max_new_tokens=6, do_sample=False)
    torch.save({"contract": contract, "any_order": any_order, "standard": standard, "generated": generated}, out)
    results.append({
        "ids": [tok(t)["input_ids"] for t in texts],
        "class": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype),
    })
loaded = sorted(m for m in sys.modules if m.startswith("armd_scale") and sys.modules[m])
venv = sys.prefix != sys.base_prefix
print(json.dumps({"blocked": blocked, "venv": venv, "loaded": loaded, "results": results}))
"""


def _convert(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["convert", *args])
    out, err = capsys.readouterr()
    return code, out, err


@torch.no_grad()
def _greedy(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy left-to-right continuation from armd_scale's model, one full forward pass per token."""
    x = prompt
    for _ in range(steps):
        n = x.shape[1] + 1
        pos = torch.arange(n).expand(x.shape[0], n)
        logits = model(torch.cat([x, torch.zeros_like(x[:, :1])], dim=1), pos, pos)
        x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


def _inputs(model) -> dict[str, torch.Tensor]:
    """A fixed batch of real ids, with a seeded random order in blocks of 4 for the contract beyond l2r."""
    mc = model.cfg
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, mc.tokenizer_vocab_size or mc.vocab_size, (2, 32), generator=g)
    order = torch.stack([torch.randperm(32, generator=g) for _ in range(2)])
    return {"tokens": tokens, "order": order, "block": (torch.arange(32) // 4).expand(2, 32)}


PACKAGE_PARENT = Path(__file__).resolve().parents[2]
IMPORT_LINE = re.compile(r"^\s*from \.+[\w.]* import ")


def _assert_built_from_package(folder: Path) -> None:
    """The folder's code is armd_scale's source by construction: every .py file is the package module its
    armd_scale.json record names, with only the recorded import lines changed (each a relative import
    before and after), and the forward modules are among them: no second copy of the arithmetic."""
    code = json.loads((folder / "armd_scale.json").read_text())["code"]
    assert sorted(p.name for p in folder.glob("*.py")) == sorted(code)
    core = {"configuration_armd.py", "modeling_armd.py", "model_config.py", "armd.py", "layers.py", "attention.py"}
    assert core | {"masks.py", "rope.py", "neighbour.py", "query_input.py"} <= set(code)
    for name, record in code.items():
        assert record["module"].startswith("armd_scale.") and record["module"].endswith("." + name[:-3])
        lines = (PACKAGE_PARENT / record["source"]).read_text().splitlines(keepends=True)
        for number, old, new in record["rewrites"]:
            assert lines[number - 1] == old + "\n" and IMPORT_LINE.match(old) and IMPORT_LINE.match(new)
            assert old.split(" import ")[1] == new.split(" import ")[1]  # the same names, from a sibling
            lines[number - 1] = new + "\n"
        assert (folder / name).read_text() == "".join(lines), name


def _load_in_isolation(tmp_path, folders: dict[str, Path]) -> list[tuple[dict, dict]]:
    """Load every folder with transformers in a fresh venv without armd_scale, on `_inputs` saved beside it
    (tmp_path/NAME-x.pt); return (facts, outputs) per folder."""
    args = []
    for name, folder in folders.items():
        args += [str(folder), str(tmp_path / f"{name}-x.pt"), str(tmp_path / f"{name}-y.pt")]
    python = python_without_armd_scale(tmp_path / "venv")
    env = clean_env(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(python), "-c", ISOLATED, json.dumps(TEXTS), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # the export folders' parent
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Do you wish to run the custom code" not in proc.stdout
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["venv"] and child["blocked"] and child["loaded"] == []  # armd_scale was never importable there
    out = []
    for name, result in zip(folders, child["results"], strict=True):
        assert result["class"] == "ARMDForCausalLM" and result["dtype"] == "torch.float32"
        out.append((result, torch.load(tmp_path / f"{name}-y.pt", weights_only=True)))
    return out


def _assert_reproduces(model, got: dict[str, torch.Tensor]) -> None:
    """The transformers model's outputs equal armd_scale's model's, fp32 bit for bit."""
    given = _inputs(model)
    x = given["tokens"]
    pos = torch.arange(32).expand(2, 32)
    with torch.no_grad():
        expected = model(x, pos, pos)
        expected_any = model(x, given["order"], given["block"])
    assert torch.equal(got["contract"], expected)  # the contract, exactly
    assert torch.equal(got["any_order"], expected_any)  # any order, blocks of 4
    assert torch.equal(got["standard"], expected[:, 1:])  # the standard call: logits[k] predicts token k + 1
    assert torch.equal(got["generated"], _greedy(model, x[:1, :5], 6))


def test_hf_export_loads_where_armd_scale_cannot_be_imported(text_run, text_bpe_run, tmp_path, capsys):
    """SentencePiece (converted to tokenizer.json) and byte-level BPE runs; fp32 logits must be equal."""
    runs = {"sp": text_run, "bpe": text_bpe_run}
    for name, run in runs.items():
        out = tmp_path / name
        code, stdout, err = _convert(capsys, "--checkpoint", str(run.dir), "--to", "hf", "--out", str(out), "--json")
        assert code == 0, err
        report = json.loads(stdout)
        assert report["to"] == "hf" and report["max_abs_logit_diff"] == 0.0 and report["exact_required"]
        assert sorted(p.name for p in out.iterdir() if p.suffix != ".py") == sorted(
            ["README.md", "armd_scale.json", "armd_tokenizer", "config.json", "generation_config.json",
             "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        )  # fmt: skip
        _assert_built_from_package(out)
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "armd"
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_armd.ARMDForCausalLM"
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert "model.embed.weight" in keys and "model.lm_head.weight" not in keys  # the tied matrix stored once
        torch.save(_inputs(load_pretrained(run.dir).model), tmp_path / f"{name}-x.pt")
    results = _load_in_isolation(tmp_path, {name: tmp_path / name for name in runs})
    for run, (result, got) in zip(runs.values(), results, strict=True):
        pre = load_pretrained(run.dir)
        _assert_reproduces(pre.model, got)
        tok = pre.tokenizer()
        assert result["ids"] == [tok.encode(t) for t in TEXTS]  # AutoTokenizer gives the training ids


# The query stream's input options (model/neighbour.py); older ModelConfigs lack them.
QUERY_INPUT_FIELDS = [
    "neighbour_heads",
    "neighbour_kind",
    "positional_start_table",
    "positional_start_scope",
    "prefix_norm",
    "prefix_query_table",
    "previous_block_input",
    "pe_lr_scale",
]
HAS_QUERY_INPUT_OPTIONS = all(hasattr(ModelConfig(), f) for f in QUERY_INPUT_FIELDS)
QUERY_INPUT_VARIANTS = {
    "default": {},  # ModelConfig's defaults: the neighbour input
    "paper": {"neighbour_heads": 0, "positional_start": False, "pe_init": "shift"},  # the paper's input
    "directional": {
        "neighbour_heads": 4,
        "positional_start": True,
        "neighbour_kind": "directional",
        "positional_start_table": "separate",
        "positional_start_scope": "first_block",
        "prefix_norm": True,
        "prefix_query_table": True,
        "pe_lr_scale": 3.0,
    },
    "neighbours_only": {"prefix_agg": "none", "neighbour_heads": 2, "previous_block_input": True, "mlp": "gelu"},
}


def _variant_export(run, out: Path, fields: dict, capsys) -> Path:
    """An export directory of `run` with the query-stream options set to ModelConfig's defaults, then
    `fields`: the run's weights where the shapes agree, every other parameter moved well away from its
    initial value (so each neighbour head, sink, table and norm matters), the tied matrix stored once."""
    from safetensors.torch import load_file, save_file

    from armd_scale.checkpoints.integrity import digest
    from armd_scale.checkpoints.model_io import build, config_of, tied_aliases, without_aliases

    code, _, err = _convert(capsys, "--checkpoint", str(run.dir), "--to", "export", "--out", str(out))
    assert code == 0, err
    meta = json.loads((out / "config.json").read_text())
    defaults = ModelConfig()
    query_input = {f: getattr(defaults, f) for f in [*QUERY_INPUT_FIELDS, "positional_start_init", "prefix_agg"]}
    meta["config"]["model"].update({**query_input, **fields})
    cfg = config_of(meta["config"], "variant")
    torch.manual_seed(0)
    model = build(cfg)
    saved = load_file(str(out / "model.safetensors"))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in saved and saved[name].shape == p.shape:
                p.copy_(saved[name])
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    aliases = tied_aliases(model)
    state = without_aliases({k: v.detach().contiguous() for k, v in model.state_dict().items()}, aliases)
    save_file(state, str(out / "model.safetensors"))
    meta.update(tied=aliases, parameters=sum(t.numel() for t in state.values()))
    meta["files"] = {**meta.get("files", {}), "model.safetensors": digest(out / "model.safetensors")}
    meta.pop("conversion")
    (out / "config.json").write_text(json.dumps(meta))
    return out


@pytest.mark.skipif(not HAS_QUERY_INPUT_OPTIONS, reason="ModelConfig has no query-stream input options here")
def test_query_stream_options_export_and_reproduce(text_run, tmp_path, capsys):
    """The default model (the neighbour input), the paper's input, directional heads with every other
    query-input option, and neighbour heads without the prefix sum: each exports, loads without
    armd_scale, and gives our logits."""
    folders = {}
    for name, fields in QUERY_INPUT_VARIANTS.items():
        source = _variant_export(text_run, tmp_path / f"{name}-export", fields, capsys)
        out = tmp_path / name
        code, stdout, err = _convert(capsys, "--checkpoint", str(source), "--to", "hf", "--out", str(out), "--json")
        assert code == 0, err
        assert json.loads(stdout)["max_abs_logit_diff"] == 0.0
        config = json.loads((out / "config.json").read_text())
        mc = load_pretrained(source).config.model
        assert all(config[f] == getattr(mc, f) for f in QUERY_INPUT_FIELDS)
        torch.save(_inputs(load_pretrained(source).model), tmp_path / f"{name}-x.pt")
        folders[name] = out
    results = _load_in_isolation(tmp_path, folders)
    for name, (_, got) in zip(folders, results, strict=True):
        pre = load_pretrained(tmp_path / f"{name}-export")
        assert (pre.model.neighbour is None) == (name == "paper")
        _assert_reproduces(pre.model, got)


def test_an_ar_run_becomes_a_stock_llama(text_ar_run, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, err = _convert(
        capsys, "--checkpoint", str(text_ar_run.dir), "--to", "hf", "--out", str(out), "--json"
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert not report["exact_required"] and report["max_abs_logit_diff"] <= 1e-5
    assert not list(out.glob("*.py"))  # no custom code
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config

    pre = load_pretrained(text_ar_run.dir)
    t = pre.config.model.vocab_size  # no vocabulary padding in this run: BOS is id T
    llama = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert type(llama).__name__ == "LlamaForCausalLM" and llama.config.bos_token_id == t
    tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ours = pre.tokenizer()
    for text in TEXTS:
        assert tok(text)["input_ids"] == [t] + ours.encode(text)  # the start token in front of every text
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, t, (2, 32), generator=g)
    pos = torch.arange(32).expand(2, 32)
    with torch.no_grad():
        expected = pre.model(x, pos, pos)
        got = llama(input_ids=torch.cat([torch.full((2, 1), t), x[:, :-1]], dim=1)).logits
    assert (got[..., :t] - expected).abs().max() <= 1e-5
    assert (torch.log_softmax(got[..., :t], -1) - torch.log_softmax(expected, -1)).abs().max() <= 1e-5
    assert (got[..., t] == 0).all() and llama.generation_config.suppress_tokens == [t]

    # armd_scale reads the folder back (eval, generate, train.init_from): the same weights exactly
    back = open_source(out)
    assert back.kind == "hf" and back.step == 10
    source = full_state(open_source(text_ar_run.dir))
    restored = full_state(back)
    assert restored.keys() <= source.keys()
    assert all(torch.equal(restored[k], source[k]) for k in restored if k not in ("lm_head.weight",))
    assert torch.equal(load_pretrained(out).model(x, pos, pos), expected)


def test_layout_armd_exports_an_ar_run_as_custom_code_exactly(text_ar_run, tmp_path, capsys):
    out = tmp_path / "hf"
    args = ["--checkpoint", str(text_ar_run.dir), "--to", "hf", "--layout", "armd", "--out", str(out), "--json"]
    code, stdout, err = _convert(capsys, *args)
    assert code == 0, err
    assert json.loads(stdout)["max_abs_logit_diff"] == 0.0
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), trust_remote_code=True, local_files_only=True
    ).eval()
    pre = load_pretrained(text_ar_run.dir)
    x = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(20).expand(2, 20)
    with torch.no_grad():
        assert torch.equal(model(x, pos, pos), pre.model(x, pos, pos))


def test_init_from_a_transformers_folder(text_run, tmp_path, capsys):
    """A shared model can be fine-tuned here: train.init_from takes the folder, with its shape and tokenizer checks."""
    from armd_scale.checkpoints.model_io import build, config_of
    from armd_scale.config import ConfigError
    from armd_scale.train.init_from import load_init_weights

    out = tmp_path / "hf"
    code, _, err = _convert(capsys, "--checkpoint", str(text_run.dir), "--to", "hf", "--out", str(out))
    assert code == 0, err
    source = open_source(text_run.dir)
    cfg = config_of({**source.config, "train": {**source.config["train"], "init_from": str(out)}}, "test")
    torch.manual_seed(123)
    model = build(cfg)
    message = load_init_weights(model, cfg, source.meta["tokenizer_sha256"])
    assert str(out) in message and "(step 20)" in message
    expected = load_pretrained(text_run.dir).model.state_dict()  # the source, tied aliases restored
    assert all(torch.equal(p.detach(), expected[k]) for k, p in model.state_dict().items())
    with pytest.raises(ConfigError, match="was trained with tokenizer"):
        load_init_weights(build(cfg), cfg, "0" * 64)


def test_model_card_and_provenance(text_run, tmp_path, capsys):
    out = tmp_path / "hf"
    code, _, err = _convert(capsys, "--checkpoint", str(text_run.dir), "--to", "hf", "--out", str(out))
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "trust_remote_code=True" in card and "| `model.n_layers` | `2` |" in card
    assert "steps: 20 of 20 planned" in card and "max abs logit difference 0 (required: exactly 0)" in card
    record = json.loads((out / "armd_scale.json").read_text())
    assert record["format"] == "armd_scale-hf-1" and record["layout"] == "armd" and record["step"] == 20
    assert record["config"] == open_source(text_run.dir).config and record["conversion"]["to"] == "hf"
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"hf: {out}" in printed and "modelling code transformers runs with trust_remote_code=True" in printed


def test_model_options_the_exported_code_lacks_are_refused(text_mdlm_run, tmp_path, capsys):
    code, _, err = _convert(capsys, "--checkpoint", str(text_mdlm_run.dir), "--to", "hf", "--out", str(tmp_path / "o"))
    assert code == 1 and "model.arch='mdlm' has no Hugging Face export" in err
    assert not (tmp_path / "o").exists()

    # The exported code is the package's own, so a model option added later is exported with it (under
    # its config.json key; the logit check decides). Only an option declared with no key is refused
    # unless at its default: the folder could not say which value it has.
    later = dataclasses.make_dataclass(
        "Later",
        [("stream_gate", str, option("plain", role=SHAPE, hf=None)), ("window", int, dataclasses.field(default=0))],
        bases=(ModelConfig,),
    )
    assert check_exportable(later(stream_gate="plain", window=3)) == []
    with pytest.raises(ConversionError, match=r"model.stream_gate='gated': the Hugging Face export code does not"):
        check_exportable(later(stream_gate="gated"))
    with pytest.raises(ConversionError, match="model.prefix_agg='max'"):
        check_exportable(dataclasses.replace(ModelConfig(), prefix_agg="max"))  # type: ignore[arg-type]


def test_a_tokenizer_that_does_not_convert_exactly_is_refused(text_run, tmp_path, capsys):
    """A SentencePiece unigram model reads `<s>` in text as a piece after conversion: the check catches it."""
    from armd_scale.checkpoints.hf_tokenizer import export_tokenizer_files
    from armd_scale.data.prepare.tokenizer_training import train_tokenizer

    tok = train_tokenizer(["builtin:pydoc"], str(tmp_path / "uni"), vocab_size=200, model_type="unigram")
    with pytest.raises(ConversionError, match="encodes .* differently from the run's tokenizer"):
        export_tokenizer_files(tok, model_max_length=31)
