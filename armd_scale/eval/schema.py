"""The JSON that `armd eval ppl`, `armd generate --json`, `armd eval sbp` and `armd eval zeroshot` write,
as data.

The schemas are plain dicts of `Field`s so that one definition serves three purposes: `validate()`
(used by the tests on real command output), docs/EVALUATION.md (whose field tables a test checks
against these dicts), and readers who want to know what a key means. Extra keys are allowed:
consumers must ignore what they do not know, and producers may add detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NoneType = type(None)


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    doc: str
    choices: tuple[Any, ...] | None = None
    items: dict[str, Field] | type | None = None  # for lists: a nested schema or an element type


def _f(types, doc: str, choices=None, items=None) -> Field:
    return Field(types if isinstance(types, tuple) else (types,), doc, choices, items)


NUMBER = (float, int)
OPT_NUMBER = (float, int, NoneType)

PPL_COMMON: dict[str, Field] = {
    "kind": _f(str, "which likelihood: l2r, random or diffusion", ("l2r", "random", "diffusion")),
    "likelihood": _f(
        str, "exact (l2r, random: each order is an exact factorization) or elbo (diffusion: a bound)", ("exact", "elbo")
    ),
    "tokens": _f(int, "tokens scored (windows x seq_len)"),
    "nll_per_token": _f(NUMBER, "mean NLL in nats per token (for random/diffusion: the mean over orders/trajectories)"),
    "ppl": _f(NUMBER, "exp(nll_per_token); for diffusion an upper bound on the sampler's perplexity"),
    "bits_per_byte": _f(OPT_NUMBER, "total NLL in bits / UTF-8 bytes of the decoded windows; null without text"),
    "bytes": _f((int, NoneType), "UTF-8 bytes of the decoded windows; null without a text tokenizer"),
    "windows": _f(int, "windows of seq_len tokens scored"),
    "seq_len": _f(int, "tokens per window"),
    "checkpoint": _f(str, "the checkpoint folder the weights came from"),
    "step": _f((int, NoneType), "its training step (null for an export without one)"),
    "weights": _f(str, "ema (the run's EMA of the weights, read by default where it kept one) or raw", ("ema", "raw")),
    "dtype": _f(str, "precision of the forward pass and log-softmax", ("float32", "float64")),
    "seed": _f(int, "seed of the random orders / trajectories"),
    "data": _f(list, "the --data sources, each {path, kind: shards|text, windows}", items=dict),
}
PPL_BY_KIND: dict[str, dict[str, Field]] = {
    "l2r": {},
    "random": {
        "orders": _f(int, "K, the number of random orders"),
        "nll_std": _f(NUMBER, "sample standard deviation (ddof=1, 0 for K=1) of the per-order NLL per token"),
        "nll_min": _f(NUMBER, "smallest per-order NLL per token"),
        "nll_max": _f(NUMBER, "largest per-order NLL per token"),
        "nll_per_order": _f(list, "NLL per token of each order", items=float),
    },
    "diffusion": {
        "steps": _f(int, "T, the number of diffusion steps"),
        "schedule": _f(str, "masking schedule", ("loglinear", "cosine")),
        "trajectories": _f(int, "K, the Monte-Carlo trajectories the ELBO is averaged over"),
        "nll_std": _f(NUMBER, "sample standard deviation of the per-trajectory ELBO per token"),
        "nll_min": _f(NUMBER, "smallest per-trajectory ELBO per token"),
        "nll_max": _f(NUMBER, "largest per-trajectory ELBO per token"),
        "nll_per_order": _f(list, "ELBO per token of each trajectory", items=float),
    },
}

SAMPLE: dict[str, Field] = {
    "tokens": _f(list, "token ids in text order (prompt included)", items=int),
    "text": _f(str, "decoded text (ids separated by spaces for a run without a text tokenizer)"),
}
GENERATE: dict[str, Field] = {
    "weights": _f(str, "ema (the run's EMA of the weights, read by default where it kept one) or raw", ("ema", "raw")),
    "streams": _f(int, "S, SBP streams (1 = left-to-right decoding)"),
    "length": _f(int, "N, tokens per sample including the prompt or the known infill tokens"),
    "forward_calls": _f(int, "model calls for one batch of samples: S + (N - P)/S - 1 with a P-token prompt"),
    "seconds": _f(NUMBER, "wall time of decoding, all samples"),
    "tokens_per_s": _f(NUMBER, "generated tokens (prompt excluded) per second of decoding"),
    "samples": _f(list, "one entry per sample", items=SAMPLE),
    "checkpoint": _f(str, "the checkpoint folder the weights came from"),
    "step": _f((int, NoneType), "its training step"),
    "prompt_tokens": _f(int, "P, prompt tokens (0 without a prompt)"),
    "temperature": _f(NUMBER, "sampling temperature (0 = greedy)"),
    "top_p": _f(NUMBER, "nucleus mass"),
    "seed": _f(int, "sampling seed"),
    "sample_dtype": _f(str, "precision of the sampling softmax", ("float32", "float64")),
}

SBP_ROW: dict[str, Field] = {
    "streams": _f(int, "S"),
    "forward_calls": _f(int, "model calls per batch: S + N/S - 1"),
    "seconds": _f(NUMBER, "wall time of decoding all samples"),
    "tokens_per_s": _f(NUMBER, "generated tokens per second of decoding"),
    "gen_ppl": _f(NUMBER, "generative perplexity: exp(total judge NLL / judge tokens)"),
    "gen_nll_per_token": _f(NUMBER, "judge NLL per judge token, nats"),
    "judge_tokens": _f(int, "tokens the judge scored, summed over samples"),
    "entropy": _f(NUMBER, "unigram entropy (nats) of each sample's token histogram, averaged over samples"),
    "samples": _f(list, "the samples", items=SAMPLE),
}
SBP: dict[str, Field] = {
    "checkpoint": _f(str, "the generator's checkpoint folder"),
    "weights": _f(str, "ema (the run's EMA of the weights, read by default where it kept one) or raw", ("ema", "raw")),
    "step": _f((int, NoneType), "its training step"),
    "judge": _f(
        dict,
        "{kind: checkpoint|transformers|self, path, tokenizer: same|retokenized, dtype; arch, step for checkpoints}",
    ),
    "length": _f(int, "N, tokens per sample"),
    "num_samples": _f(int, "K, samples per S"),
    "temperature": _f(NUMBER, "sampling temperature"),
    "top_p": _f(NUMBER, "nucleus mass"),
    "seed": _f(int, "sampling seed (the same for every S)"),
    "sample_dtype": _f(str, "precision of the sampling softmax", ("float32", "float64")),
    "results": _f(list, "one row per S, in sweep order", items=SBP_ROW),
}

ZEROSHOT_ROW: dict[str, Field] = {
    "task": _f(str, "benchmark: lambada, wikitext2, ptb, wikitext103, lm1b, ag_news, pubmed or arxiv"),
    "title": _f(str, "its column in the published table (Table 1; MDLM's Table 3 for ag_news, pubmed, arxiv)"),
    "split": _f(
        str,
        "the split the files were verified to be, with how (digest or row count); 'unverified: <why>' when a "
        "refused input was scored with --allow-unverified",
    ),
    "verified": _f(bool, "true when the files are the published set the protocol evaluates (eval/zeroshot_inputs.py)"),
    "fingerprint": _f(
        dict, "{content_sha256, row_encoding, rows, tokens, files: [{path, bytes, sha256}]} of the input"
    ),
    "data": _f(list, "the files read, in order", items=str),
    "rows": _f(int, "dataset rows read (every row is a document; sedd and mdlm append a separator to each)"),
    "blocks": _f(int, "blocks of block_len tokens scored"),
    "stream_tokens": _f(int, "tokens of all rows, separators included"),
    "dropped_tokens": _f(int, "tokens of the remainders that fill no block (one per joined group)"),
    "tokens": _f(int, "scored tokens (the denominator of nll_per_token)"),
    "nll": _f(NUMBER, "total NLL in nats (an upper bound for elbo)"),
    "nll_per_token": _f(NUMBER, "nll / tokens"),
    "ppl": _f(NUMBER, "exp(nll_per_token): token-weighted over all blocks"),
    "words": _f(int, "whitespace-separated words of the detokenized text the blocks cover"),
    "word_ppl": _f(OPT_NUMBER, "exp(nll / words)"),
    "bytes": _f((int, NoneType), "UTF-8 bytes of the scored tokens"),
    "bits_per_byte": _f(OPT_NUMBER, "nll in bits / bytes"),
}
ZEROSHOT: dict[str, Field] = {
    "weights": _f(str, "ema (the run's EMA of the weights, read by default where it kept one) or raw", ("ema", "raw")),
    "protocol": _f(
        str,
        "sedd (raw blocks), mdlm ([BOS] + L-2 tokens + [EOS]) or bd3lm (the same, no separator between rows)",
        ("sedd", "mdlm", "bd3lm"),
    ),
    "protocol_table": _f(str, "the published table the protocol reproduces"),
    "num_proc": _f((int, NoneType), "null: rows joined into one stream; N: per 1000-row batch of N contiguous shards"),
    "joining": _f(str, "how rows are joined before the cut, in words"),
    "checkpoint": _f(str, "the checkpoint folder the weights came from"),
    "step": _f((int, NoneType), "its training step"),
    "arch": _f(str, "armd, ar or mdlm"),
    "likelihood": _f(str, "exact (armd, ar: left to right) or elbo (mdlm: a negative-ELBO bound)", ("exact", "elbo")),
    "method": _f(str, "the estimator in words"),
    "steps": _f((int, NoneType), "mdlm: 0 = continuous-time ELBO, T >= 1 = T-step ELBO; null for exact"),
    "samples": _f((int, NoneType), "mdlm, continuous time: draws of the time per block; null otherwise"),
    "block_len": _f(int, "L, tokens per block"),
    "scored_positions": _f(str, "which positions of a block are scored"),
    "bos_id": _f((int, NoneType), "mdlm and bd3lm protocols: the BOS id blocks start with"),
    "separator_id": _f(int, "the EOS id: appended to every row (sedd, mdlm) and ending mdlm and bd3lm blocks"),
    "tokenizer_sha256": _f((str, NoneType), "the checkpoint's tokenizer"),
    "dtype": _f(str, "precision of the forward pass", ("float32", "float64")),
    "seed": _f(int, "seed of the mdlm ELBO's masks"),
    "aggregation": _f(str, "how per-block numbers are combined"),
    "results": _f(list, "one entry per benchmark, in --task order", items=ZEROSHOT_ROW),
}

SCHEMAS: dict[str, dict[str, Field]] = {"generate": GENERATE, "sbp": SBP, "zeroshot": ZEROSHOT}


class SchemaError(ValueError):
    """A JSON document does not follow its schema; the message lists every problem with its path."""


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true/false are not numbers
        return bool in types
    return isinstance(value, types)


def _check(doc: Any, fields: dict[str, Field], path: str, errors: list[str]) -> None:
    if not isinstance(doc, dict):
        errors.append(f"{path}: expected an object, got {type(doc).__name__}")
        return
    for key, field in fields.items():
        where = f"{path}.{key}"
        if key not in doc:
            errors.append(f"{where}: missing")
            continue
        value = doc[key]
        if not _type_ok(value, field.types):
            names = "/".join("null" if t is NoneType else t.__name__ for t in field.types)
            errors.append(f"{where}: expected {names}, got {type(value).__name__} {value!r:.60}")
            continue
        if field.choices is not None and value not in field.choices:
            errors.append(f"{where}: {value!r} is not one of {list(field.choices)}")
        if isinstance(value, list) and field.items is not None:
            for i, item in enumerate(value):
                if isinstance(field.items, dict):
                    _check(item, field.items, f"{where}[{i}]", errors)
                elif not _type_ok(item, (field.items,) if field.items is not float else NUMBER):
                    errors.append(f"{where}[{i}]: expected {field.items.__name__}, got {type(item).__name__}")


def ppl_fields(kind: str) -> dict[str, Field]:
    if kind not in PPL_BY_KIND:
        raise SchemaError(f"$.kind: {kind!r} is not one of {list(PPL_BY_KIND)}")
    return {**PPL_COMMON, **PPL_BY_KIND[kind]}


def validate(doc: Any, schema: str) -> None:
    """Raise SchemaError unless `doc` follows schema 'ppl', 'generate', 'sbp' or 'zeroshot'."""
    errors: list[str] = []
    if schema == "ppl":
        kind = doc.get("kind") if isinstance(doc, dict) else None
        _check(doc, ppl_fields(kind if kind in PPL_BY_KIND else "l2r"), "$", errors)
        expected = "elbo" if kind == "diffusion" else "exact"
        if kind in PPL_BY_KIND and doc.get("likelihood") != expected:
            errors.append(f"$.likelihood: kind {kind} is an {expected} likelihood, got {doc.get('likelihood')!r}")
    elif schema in SCHEMAS:
        _check(doc, SCHEMAS[schema], "$", errors)
    else:
        raise ValueError(f"unknown schema '{schema}'; choose ppl, {', '.join(SCHEMAS)}")
    if errors:
        raise SchemaError(f"{schema} JSON does not follow its schema:\n  " + "\n  ".join(errors))
