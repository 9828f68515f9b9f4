"""`armd convert --to hf`: any checkpoint -> a Hugging Face transformers folder that colleagues load
with `AutoModelForCausalLM` / `AutoTokenizer`, without armd_scale installed.

    OUT/
      config.json, generation_config.json
      configuration_armd.py, modeling_armd.py   custom-code layout only: the transformers glue (hf_code/)
      armd.py, layers.py, ..., model_config.py  ... and armd_scale's own modules it imports, followed from
                                                its imports and copied with only the package-relative
                                                imports made sibling imports (hf_code_files.py)
      model.safetensors                         the weights (a tied matrix stored once)
      tokenizer.json, tokenizer_config.json     hf_tokenizer.py, checked to give the training ids
      README.md                                 the model card (model_card.py)
      armd_scale.json                           {"format", "layout", "config" (resolved run config), "step",
                                                 "tokenizer_sha256", provenance, "conversion", "code" (each
                                                 .py file's source module and import rewrites), "files" (size
                                                 and SHA-256 of every other file, as an export's config.json;
                                                 transformers never reads this file)}
      armd_tokenizer/                           the run's own tokenizer files, as `--to export` copies them

Layouts (hf_mapping.py): `llama` for an `ar` run with the SwiGLU MLP (a stock LlamaForCausalLM, the
start vector as a BOS row), `armd` (custom code, `trust_remote_code=True`) for everything else;
`--layout armd` forces the custom code for an `ar` run.

Validation, before anything is published: the folder is loaded back with transformers'
`AutoModelForCausalLM` and run on the fixed batch of validate.py next to the source weights. The
custom code must give exactly the same fp32 logits, through armd_scale's contract (on the batch in
left-to-right order and again in a seeded random order with blocks of 3) and through the standard
left-to-right call; a stock Llama computes RoPE tables in float32 and normalises in its own
order, so its logits over the real vocabulary must agree within 1e-5. Reading the folder back the way
armd_scale does (`--checkpoint DIR`, `train.init_from=DIR`) must give exactly the source's logits.

Integrity: armd_scale.json is written last and lists every other file with its size and SHA-256
(integrity.digests, the format of an export's config.json); every armd_scale reader verifies them
before it reads the weights (hf_mapping.verify_hf_folder), so a damaged file is named, never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..model import model_class
from .atomic import atomic_dir, check_out, refuse_overlap
from .export import copy_tokenizer
from .hf_code_files import write_code
from .hf_mapping import (
    armd_config,
    check_exportable,
    llama_config,
    llama_incompatibility,
    read_hf_state,
    real_vocab,
    to_armd_state,
    to_llama_state,
)
from .hf_tokenizer import export_tokenizer_files
from .integrity import digests, recorded_files
from .layout import EXPORT_WEIGHTS, FILES, HF_FORMAT, HF_META, HF_TOKENIZER
from .model_card import model_card
from .model_io import config_of, parameter_count, tied_aliases, without_aliases
from .report import ConversionError, ConversionReport, Progress
from .source import open_source, reads_newest
from .validate import fixed_batch, max_abs_diff, model_from_state
from .weights import full_state
from .weights_file import write_weights

LAYOUTS = ("auto", "armd", "llama")
LLAMA_TOLERANCE = 1e-5
REFERENCE = "armd_scale's model on the source's full fp32 weights (weights.full_state)"


@reads_newest
def export_hf(
    path: str | Path,
    out: str | Path,
    *,
    tokenizer: bool = True,
    layout: str = "auto",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    progress: Progress | None = None,
) -> ConversionReport:
    """Write the transformers folder `out` for checkpoint `path`, validated; optionally upload it."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ConversionError(
            "--to hf needs the transformers package: pip install 'armd_scale[transformers]'"
        ) from None
    progress = progress or Progress()
    out = check_out(out, overwrite=overwrite)
    if layout not in LAYOUTS:
        raise ConversionError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    source = open_source(path)
    refuse_overlap(source.folder, out)
    if source.kind == "hf":
        raise ConversionError(f"{source.folder} is already a transformers folder")
    cfg = config_of(source.config, str(source.meta_file))
    mc = cfg.model
    notes = check_exportable(mc)
    reason = llama_incompatibility(mc)
    if layout == "llama" and reason:
        raise ConversionError(f"--layout llama: {reason}; the custom-code layout (--layout armd) exports it")
    chosen = "llama" if layout in ("auto", "llama") and reason is None else "armd"
    if model_class(mc).causal_lm and chosen == "armd":
        notes.append(f"custom code instead of a stock Llama: {reason or '--layout armd'}")

    progress(f"reading the full weights of {source.folder} ({source.kind}, step {source.step})")
    state = full_state(source)
    reference = model_from_state(cfg, state, str(source.folder)).float().eval()
    if source.averaged:
        notes.append("the EMA of the weights (ema.safetensors; --raw-weights exports model.safetensors)")
    batch = fixed_batch(cfg)
    real = real_vocab(mc)
    tokens, order, block = batch.tensors(real)  # real ids: a Llama export has no rows for padded ones
    any_order = _any_order(tokens, model_class(mc).multi_token_blocks)
    with torch.no_grad():
        expected = reference(tokens, order, block).float()
        expected_any = reference(*any_order).float()

    with atomic_dir(out, overwrite=overwrite) as tmp:
        tok = None
        if tokenizer:
            meta = {**source.meta, "tokenizer_dir": source.tokenizer_dir}
            if copy_tokenizer(meta, tmp / HF_TOKENIZER, notes, progress):
                from ..data.tokenizers.load import load_tokenizer

                tok = load_tokenizer(str(tmp / HF_TOKENIZER))
        else:
            notes.append("tokenizer left out (--no-tokenizer)")
        separator = None if tok is None else tok.eos_id
        progress(f"writing the {chosen} layout: config, generation config, {EXPORT_WEIGHTS}")
        code = None
        if chosen == "llama":
            _write_llama(tmp, cfg, state, separator)
        else:
            code = _write_armd(tmp, cfg, state, tied_aliases(reference), separator)
        tok_facts = None
        if tok is not None:
            progress("writing tokenizer.json and tokenizer_config.json (checked against the run's tokenizer)")
            max_len = mc.max_seq_len if chosen == "llama" else mc.max_seq_len - 1
            files, tok_facts = export_tokenizer_files(
                tok, model_max_length=max_len, llama_bos=real if chosen == "llama" else None
            )
            for name, data in files.items():
                (tmp / name).write_bytes(data)

        progress("validating: transformers loads the folder, both models on the fixed batch")
        diff, standard = _transformers_logits_gap(tmp, chosen, tokens, order, block, expected, real)
        if chosen == "armd":  # neighbour heads and multi-token blocks see keys on both sides only here
            diff = max(diff, _transformers_logits_gap(tmp, chosen, *any_order, expected_any, real)[0])
        back = model_from_state(cfg, read_hf_state(tmp, chosen, mc), f"{tmp} (read back)").float().eval()
        with torch.no_grad():
            readback = max_abs_diff(expected, back(tokens, order, block).float())
        exact = chosen == "armd"
        if not exact:
            notes.append(
                f"a stock Llama rounds differently (RoPE tables in float32, its RMSNorm): the logits over the real "
                f"vocabulary may differ by up to {LLAMA_TOLERANCE:g}"
            )
        notes.append(
            f"reading the folder back with armd_scale: max abs logit difference {readback:g}; "
            + ("standard left-to-right call: " + f"{standard:g}" if exact else "BOS is id " + str(real))
        )
        report = ConversionReport(
            to="hf",
            source=str(source.folder),
            source_kind=source.kind,
            out=str(out),
            step=source.step,
            reference=REFERENCE,
            batch=batch.to_dict(),
            max_abs_logit_diff=diff,
            exact_required=exact,
            dtype="fp32",
            parameters=parameter_count(reference),
            seconds=progress.elapsed,
            notes=notes,
        )
        if readback != 0:
            raise ConversionError(f"reading {out} back with armd_scale does not reproduce the source ({readback:g})")
        if exact and (diff != 0 or standard != 0):
            raise ConversionError(
                f"the transformers model of {source.folder} does not reproduce it: max abs logit difference "
                f"{diff:g} (contract), {standard:g} (standard call); both must be 0"
            )
        if not exact and diff > LLAMA_TOLERANCE:
            raise ConversionError(
                f"the Llama export of {source.folder} is off by {diff:g} in the logits (allowed {LLAMA_TOLERANCE:g})"
            )
        record = {
            "format": HF_FORMAT,
            "layout": chosen,
            "config": source.config,
            "step": source.step,
            "tokenizer_sha256": source.meta.get("tokenizer_sha256"),
            "tokenizer": HF_TOKENIZER if tok is not None else None,
            "parameters": report.parameters,
            "topology": source.topology,
            "loader": source.meta.get("loader"),
            "trainer": source.meta.get("trainer"),
            "wandb_run_id": source.meta.get("wandb_run_id"),
            "saved_at": source.meta.get("saved_at"),
            "source": {"path": str(source.folder), "kind": source.kind},
            "conversion": report.to_dict(),
            **({"llama": {"bos_id": real, "real_vocab": real}} if chosen == "llama" else {}),
            **({"code": code} if code is not None else {}),
        }
        card = model_card(
            cfg,
            {**source.meta, "step": source.step},
            layout=chosen,
            report=report.to_dict(),
            tokenizer=tok_facts,
            parameters=report.parameters,
        )
        (tmp / "README.md").write_text(card)
        # last: the size and SHA-256 of every other file, verified by every armd_scale reader
        record[FILES] = digests(tmp, [n for n in recorded_files(tmp) if n != HF_META], sync=True)
        (tmp / HF_META).write_text(json.dumps(record, indent=1))
    progress(f"done: {out}")
    if push_to_hub:
        push(out, push_to_hub, progress)
    return report


def _write_armd(tmp: Path, cfg, state, aliases: dict[str, str], separator: int | None) -> dict[str, dict]:
    """Write the custom-code layout; returns the shipped code's record (hf_code_files.write_code)."""
    from transformers import GenerationConfig

    from .hf_code.configuration_armd import ARMDConfig

    code = write_code(tmp)
    config = ARMDConfig(**armd_config(cfg.model), eos_token_id=separator, pad_token_id=separator)
    config.architectures = ["ARMDForCausalLM"]
    config.auto_map = {
        "AutoConfig": "configuration_armd.ARMDConfig",
        "AutoModelForCausalLM": "modeling_armd.ARMDForCausalLM",
    }
    config.save_pretrained(tmp)
    weights = {k: v.contiguous() for k, v in to_armd_state(without_aliases(state, aliases)).items()}
    write_weights(weights, tmp / EXPORT_WEIGHTS, metadata={})
    # no KV cache in the exported code: every generation step runs the whole (short) sequence
    generation = GenerationConfig(eos_token_id=separator, pad_token_id=separator, use_cache=False)
    generation.save_pretrained(tmp)
    return code


def _write_llama(tmp: Path, cfg, state, separator: int | None) -> None:
    from transformers import GenerationConfig, LlamaConfig

    mc = cfg.model
    bos = real_vocab(mc)
    config = LlamaConfig(**llama_config(mc), eos_token_id=separator, pad_token_id=separator)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp)
    write_weights(to_llama_state(state, mc), tmp / EXPORT_WEIGHTS, metadata={})
    generation = GenerationConfig(
        bos_token_id=bos,
        eos_token_id=separator,
        pad_token_id=separator,
        suppress_tokens=[bos],  # the start token is input only: its output row is zero, never sample it
    )
    generation.save_pretrained(tmp)


def _any_order(tokens: torch.Tensor, multi_token_blocks: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed tokens under a seeded random order, in blocks of 3 (single tokens for a model that allows
    no larger blocks, the AR baseline): the custom code must reproduce the contract beyond left to right."""
    b, n = tokens.shape
    g = torch.Generator().manual_seed(1)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    block = (torch.arange(n) // (3 if multi_token_blocks else 1)).expand(b, n)
    return tokens, order, block


@torch.no_grad()
def _transformers_logits_gap(
    folder: Path, layout: str, tokens, order, block, expected: torch.Tensor, real: int
) -> tuple[float, float]:
    """(contract or Llama gap, standard-call gap) of the folder as transformers loads it; the standard
    call (left to right) is compared only when order is the left-to-right one."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(folder), trust_remote_code=layout == "armd", local_files_only=True, dtype=torch.float32
    )
    model.eval()
    if layout == "llama":
        bos = torch.full((tokens.shape[0], 1), real)
        got = model(input_ids=torch.cat([bos, tokens[:, :-1]], dim=1)).logits.float()
        return max_abs_diff(expected[..., :real], got[..., :real]), 0.0
    contract = max_abs_diff(expected, model(tokens, order, block).float())
    if not torch.equal(order, torch.arange(order.shape[1]).expand_as(order)):
        return contract, 0.0
    standard = max_abs_diff(expected[:, 1:], model(input_ids=tokens[:, :-1]).logits.float())
    return contract, standard


def push(folder: Path, repo: str, progress: Progress) -> None:
    """Upload the folder to the Hugging Face Hub repository `repo` (created if needed; needs a token)."""
    from huggingface_hub import HfApi

    progress(f"uploading {folder} to the Hugging Face Hub: {repo}")
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="armd convert --to hf")
    progress(f"uploaded: https://huggingface.co/{repo}")
