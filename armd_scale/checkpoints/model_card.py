"""README.md of a Hugging Face export: how to load it, what the numbers mean, the config and how it
was trained. Everything in it comes from the checkpoint's own records (config, meta, the validation
report), so the card never claims what the run did not do.
"""

from __future__ import annotations

from typing import Any

from ..config import Config

PAPER = "Karami & Ghodsi, AISTATS 2026"


def _rows(pairs: list[tuple[str, Any]]) -> list[str]:
    return ["| key | value |", "|---|---|"] + [f"| `{k}` | `{v}` |" for k, v in pairs]


def _training(cfg: Config, meta: dict[str, Any]) -> list[str]:
    step = meta.get("step")
    t, topo = cfg.train, meta.get("topology") or {}
    order = t.order
    lines = [
        f"- steps: {step if step is not None else 'unknown'} of {t.steps} planned; global batch {t.global_batch_size} "
        f"sequences of {cfg.data.seq_len} tokens"
        + (f" (about {step * t.global_batch_size * cfg.data.seq_len:,} tokens seen)" if step else ""),
        f"- data: `{cfg.data.train}`; tokenizer sha256 `{meta.get('tokenizer_sha256')}`",
        f"- order schedule: `{order.kind}`"
        + (
            f" (ar_steps {order.ar_steps}, rho {order.rho}, ramp_end {order.ramp_end})"
            if order.kind == "progressive"
            else ""
        )
        + (f" (streams {order.streams})" if order.kind == "sbp" else ""),
        f"- optimiser: AdamW, lr {t.lr} ({t.lr_schedule}, warm-up {t.warmup_steps}, min ratio {t.min_lr_ratio}), "
        f"weight decay {t.weight_decay}, betas ({t.beta1}, {t.beta2}), grad clip {t.grad_clip}",
        f"- precision {topo.get('precision', cfg.parallel.precision)}, "
        f"ZeRO-{topo.get('zero_stage', cfg.parallel.zero_stage)}, "
        f"world size {topo.get('world_size', '?')} (TP {topo.get('tp', cfg.parallel.tp)})",
    ]
    if cfg.train.init_from:
        lines.append(f"- initialised from `{cfg.train.init_from}`")
    return lines


def model_card(
    cfg: Config,
    meta: dict[str, Any],
    *,
    layout: str,
    report: dict[str, Any],
    tokenizer: dict[str, Any] | None,
    parameters: int,
) -> str:
    """The README.md text. layout: "armd" (custom code) or "llama" (stock LlamaForCausalLM)."""
    mc = cfg.model
    custom = layout == "armd"
    tags = ["armd_scale", "text-generation"] + (["armd", "masked-diffusion"] if mc.arch == "armd" else ["llama"])
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    front += [f"- {tag}" for tag in tags] + ["---", ""]
    load = [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"model = AutoModelForCausalLM.from_pretrained(PATH{', trust_remote_code=True' if custom else ''})",
        f"tokenizer = AutoTokenizer.from_pretrained(PATH{', trust_remote_code=True' if custom else ''})",
        'ids = tokenizer("The module", return_tensors="pt").input_ids',
        "out = model.generate(ids, max_new_tokens=32, do_sample=True)",
        "```",
    ]
    if custom:
        usage = [
            "`model(input_ids)` is an ordinary left-to-right causal LM (`logits[:, k]` predicts token k + 1), so",
            "`generate()` works (without a KV cache). `logits = model(tokens, order, block)` is armd_scale's contract:",
            "`logits[b, k]` predicts `tokens[b, order[b, k]]` from the tokens of strictly earlier blocks, for any",
            "generation order and any block structure (strided block-parallel decoding, infilling, random orders);",
            "with `order = block = arange(n)` it gives the exact left-to-right likelihood of every token, the first",
            "one included. The code (`modeling_armd.py`, `configuration_armd.py` and the model modules beside them,",
            "armd_scale's own source with only its package imports made sibling imports) needs only torch and",
            "transformers.",
        ]
    else:
        usage = [
            "A stock `LlamaForCausalLM`, no custom code. The tokenizer puts the start token `<|armd_start|>` (the last",
            "id) in front of every text: its embedding row is the learned start vector of armd_scale's AR baseline,",
            "which Llama has no other place for. Its output row is zero, so score with `logits[..., :-1]` (the real",
            "vocabulary); `generation_config.json` suppresses it in generation.",
        ]
    diff = report.get("max_abs_logit_diff")
    required = "required: exactly 0" if report.get("exact_required") else "required: <= 1e-5"
    validation = [
        f"Validated at export: the transformers model and armd_scale's model, both in fp32, on a fixed batch "
        f"({report.get('batch', {}).get('batch')} x {report.get('batch', {}).get('seq_len')} tokens, seed 0, left to "
        f"right): max abs logit difference {diff:g} ({required}).",
    ]
    model_pairs = [(f"model.{k}", v) for k, v in cfg.to_dict()["model"].items()]
    lines = [
        *front,
        f"# {cfg.run.name or cfg.run.dir.rstrip('/').split('/')[-1]} ({mc.arch}, {parameters:,} parameters)",
        "",
        f"An {'Auto-Regressive Masked Diffusion (ARMD)' if mc.arch == 'armd' else 'autoregressive baseline'} model "
        f"trained with armd_scale ({PAPER}), exported with `armd convert --to hf`.",
        "",
        "## Use",
        "",
        *load,
        "",
        *usage,
        "",
        *validation,
        "",
        "## Training",
        "",
        *_training(cfg, meta),
        "",
        "## Tokenizer",
        "",
    ]
    if tokenizer:
        lines += [
            f"`tokenizer.json` is {tokenizer['origin']}; it was checked to give the training ids on "
            f"{tokenizer['verified_texts']} texts. Special tokens: "
            + ", ".join(f"{k} `{v}`" for k, v in tokenizer["special_tokens"].items())
            + ". Text that spells a special token is encoded as text, as in training.",
        ]
    else:
        lines.append("None exported: pass token ids.")
    lines += ["", "## Configuration", "", *_rows(model_pairs), ""]
    lines += [
        "The full resolved run configuration and the export's validation record are in `armd_scale.json`;",
        "`armd_scale` loads this folder too (`armd eval ... --checkpoint DIR`, `train.init_from=DIR`).",
        "",
    ]
    return "\n".join(lines)
