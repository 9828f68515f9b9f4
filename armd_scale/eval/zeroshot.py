"""`armd eval zeroshot`: the zero-shot perplexity protocols of SEDD / RADD, MDLM and BD3-LM: score the
blocks (eval/zeroshot_blocks.py) of verified inputs (eval/zeroshot_inputs.py) and report them.

Scores: `armd` and `ar` give the exact left-to-right NLL of each block (one forward pass); `mdlm`
gives a negative ELBO, an upper bound labelled `elbo` everywhere: by default the continuous-time bound
MDLM's tables report (`steps=0`; K draws of the time per block, K forward passes), or the T-step
bound as an ablation (`steps=T`, T forward passes per block). Aggregation is token-weighted:
PPL = exp(sum of NLL over all blocks / scored tokens), per benchmark. Per-word and per-byte figures
divide the same total NLL by the words (whitespace-separated, of the detokenized rows the blocks
cover, counted row by row) and the UTF-8 bytes of the scored tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from ..data.errors import DataError
from ..data.tokenizers.base import Tokenizer
from ..model import Model
from ..model.generation_orders import l2r_order
from ..model.masked_diffusion import continuous_draws, continuous_nelbo, discrete_nelbo, sequence_generator
from .likelihood import position_nll
from .text import bits_per_byte, codec_for
from .zeroshot_blocks import (
    MAP_BATCH_SIZE,
    PROTOCOL_TABLES,
    PROTOCOLS,
    Blocks,
    scored_from,
    separator_id,
    wrap_blocks,
    wrapper_bos_id,
)
from .zeroshot_data import BENCHMARKS, TABLE_1, TABLE_3_EXTRA, Benchmark, benchmark, read_rows
from .zeroshot_inputs import Fingerprint, Verification, fingerprint, verify

AGGREGATION = "token-weighted: exp(total NLL / scored tokens) over all blocks of a benchmark"


@torch.no_grad()
def score_blocks(
    model: Model,
    blocks: np.ndarray,
    *,
    first: int,
    batch_size: int,
    dtype: torch.dtype,
    steps: int | None,
    seed: int,
    samples: int = 1,
    progress: bool = True,
    desc: str = "",
) -> float:
    """Total NLL (nats) of positions first.. of every block: exact l2r, or (a model whose likelihood is a
    bound) the negative ELBO: continuous time with `samples` draws per block (steps=0), or the T-step
    bound (steps=T). Either way block i's noise comes from `sequence_generator(seed, i)`, so the number
    does not depend on the batch size."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    n, length = blocks.shape
    order, block = l2r_order(1, length)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
        x = torch.as_tensor(blocks[start : start + batch_size], dtype=torch.long, device=device)
        if model.likelihood_kind == "bound":
            assert model.mask_id is not None and steps is not None  # evaluate_zeroshot checks both
            if steps == 0:
                rates, uniforms = continuous_draws(seed, range(start, start + x.shape[0]), samples, length)
                total += continuous_nelbo(model, x, rates, uniforms, model.mask_id, first).sum()
            else:
                generators = [sequence_generator(seed, i) for i in range(start, start + x.shape[0])]
                total += discrete_nelbo(model, x, steps, model.mask_id, generators, first).double().sum()
        else:
            total += position_nll(model, x, order[0], block[0], dtype)[:, first:].sum()
    return float(total)


def _task_result(
    bench: Benchmark,
    paths: Sequence[str],
    blocks: Blocks,
    nll: float,
    first: int,
    codec: Tokenizer,
    check: Verification,
    fp: Fingerprint,
) -> dict[str, Any]:
    scored = blocks.tokens[:, first:]
    tokens = int(scored.size)
    table = codec.byte_lengths()
    num_bytes = int(table[scored].sum()) if table is not None else None
    per_token = nll / tokens
    return {
        "task": bench.name,
        "title": bench.title,
        "split": check.label,  # what verify established about the files, never the protocol's constant
        "verified": check.verified,
        "fingerprint": fp.as_dict(),
        "data": list(paths),
        "rows": blocks.rows,
        "blocks": int(blocks.tokens.shape[0]),
        "stream_tokens": blocks.stream_tokens,
        "dropped_tokens": blocks.dropped,
        "tokens": tokens,
        "nll": nll,
        "nll_per_token": per_token,
        "ppl": math.exp(per_token),
        "words": blocks.words,
        "word_ppl": math.exp(nll / blocks.words) if blocks.words else None,
        "bytes": num_bytes,
        "bits_per_byte": bits_per_byte(nll, num_bytes),
    }


def evaluate_zeroshot(
    checkpoint: str,
    tasks: Sequence[tuple[str, Sequence[str]]],
    *,
    protocol: str = "sedd",
    block_len: int | None = None,
    steps: int | None = None,
    samples: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    float64: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_unverified: bool = False,
    num_proc: int | None = None,
) -> dict[str, Any]:
    """The `armd eval zeroshot` document: `tasks` is [(benchmark name, [files])], in table order or not.

    Every task's files are fingerprinted and checked against the published set its protocol evaluates
    (eval/zeroshot_inputs.py) before anything is scored; `allow_unverified` scores a refused input anyway,
    labelled "unverified: ...". `num_proc`: None joins each benchmark's rows into one stream; N reproduces
    the published joining per 1000-row batch of N contiguous worker shards (`join_groups`)."""
    from ..checkpoints.pretrained import load_pretrained

    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not tasks:
        raise ValueError("no --task given: choose from " + ", ".join(BENCHMARKS))
    benches = [(benchmark(name), list(paths)) for name, paths in tasks]
    if len({b.name for b, _ in benches}) != len(benches):
        raise ValueError("a --task is given twice; pass all its files to one --data")
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be >= 1")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"--num-proc {num_proc} must be >= 1 (or left out for one stream)")
    dtype = torch.float64 if float64 else torch.float32
    pre = load_pretrained(checkpoint, device=device, dtype=dtype)
    arch = pre.config.model.arch  # named in messages and the document; what to do is the model's to say
    model = cast(Model, pre.model)  # load_pretrained builds a Model (checkpoints/model_io.py)
    exact = model.likelihood_kind == "exact"
    if exact and (steps is not None or samples is not None):
        flag = "--steps" if steps is not None else "--samples"
        raise ValueError(
            f"{flag} applies to a model whose likelihood is a bound (arch mdlm); "
            f"arch {arch} is scored with its exact l2r likelihood: drop {flag}"
        )
    if not exact:
        steps = 0 if steps is None else steps
        if steps < 0:
            raise ValueError(f"--steps {steps}: expected 0 (continuous-time bound) or T >= 1 (T-step bound)")
        if steps and samples is not None:
            raise ValueError(
                f"--samples {samples} sets the draws of the continuous-time bound (--steps 0); "
                f"--steps {steps} scores every one of its {steps} steps per block: drop --samples"
            )
        samples = 1 if steps == 0 and samples is None else samples
        if samples is not None and samples < 1:
            raise ValueError(f"--samples {samples}: expected K >= 1 draws of the time per block")
    max_len = pre.config.model.max_seq_len
    length = block_len or min(pre.config.data.seq_len, max_len)
    if length > max_len:
        raise DataError(f"--block-len {length} exceeds the model's max_seq_len={max_len}")
    codec = codec_for(pre)
    first = scored_from(protocol, exact)
    checked = []
    for bench, paths in benches:
        if not paths:
            raise DataError(f"--task {bench.name} has no --data files")
        fp = fingerprint(paths, bench.name, bench)
        checked.append((bench, paths, fp, verify(bench.name, protocol, fp, allow_unverified=allow_unverified)))
    results = []
    for bench, paths, fp, check in checked:
        rows = (row for path in paths for row in read_rows(path, bench))
        blocks = wrap_blocks(rows, bench, codec, length, protocol, num_proc)
        fp.tokens = blocks.text_tokens
        nll = score_blocks(
            model,
            blocks.tokens,
            first=first,
            batch_size=batch_size,
            dtype=dtype,
            steps=steps,
            seed=seed,
            samples=samples or 1,
            progress=progress,
            desc=f"zeroshot {bench.name}",
        )
        results.append(_task_result(bench, paths, blocks, nll, first, codec, check, fp))
    return {
        "protocol": protocol,
        "protocol_table": PROTOCOL_TABLES[protocol],
        "num_proc": num_proc,
        "joining": _joining(num_proc),
        "checkpoint": str(pre.source),
        "step": pre.step,
        "weights": pre.weights,
        "arch": arch,
        "likelihood": "exact" if exact else "elbo",
        "method": _method(exact, steps, samples),
        "steps": None if exact else steps,
        "samples": samples,
        "block_len": length,
        "scored_positions": f"{first}..{length - 1} of each block",
        "bos_id": None if protocol == "sedd" else wrapper_bos_id(codec),
        "separator_id": separator_id(codec),
        "tokenizer_sha256": codec.sha256 or None,
        "dtype": str(dtype).removeprefix("torch."),
        "seed": seed,
        "aggregation": AGGREGATION,
        "results": results,
    }


def _joining(num_proc: int | None) -> str:
    if num_proc is None:
        return "all rows of a benchmark joined into one stream, one remainder dropped"
    return (
        f"per {MAP_BATCH_SIZE}-row batch within each of min({num_proc}, rows) contiguous shards "
        "(datasets.map(batched=True, num_proc)), each batch's remainder dropped"
    )


def _method(exact: bool, steps: int | None, samples: int | None) -> str:
    """The estimator in words, for the document and the table's caption."""
    if exact:
        return "exact left-to-right NLL"
    if steps == 0:
        draws = f"K={samples} draw{'s' if samples != 1 else ''} of the time per block"
        return f"negative ELBO, continuous time, {draws} (upper bound in expectation)"
    return f"negative ELBO, T={steps} discrete steps, every step's term per block (upper bound in expectation)"


def markdown_table(doc: dict[str, Any]) -> str:
    """The published tables' layout (one row: this checkpoint): Table 1's columns, then the ones MDLM's
    Table 3 adds where any of them was evaluated; then the per-benchmark details."""
    by_task = {r["task"]: r for r in doc["results"]}
    bound = "≤" if doc["likelihood"] == "elbo" else ""
    columns = TABLE_1 + (TABLE_3_EXTRA if any(name in by_task for name in TABLE_3_EXTRA) else ())
    titles = [BENCHMARKS[name].title for name in columns]
    cells = [f"{bound}{by_task[name]['ppl']:.2f}" if name in by_task else "–" for name in columns]
    model = f"{doc['arch']} (step {doc['step']})"
    protocol = doc["protocol"]
    label = PROTOCOL_TABLES.get(protocol, protocol)
    num_proc = doc.get("num_proc")
    joining = (
        "rows joined into one stream"
        if num_proc is None
        else f"rows joined per {MAP_BATCH_SIZE}-row batch of {num_proc} contiguous shards"
    )
    lines = [
        f"Zero-shot perplexity, protocol `{protocol}` ({label}), blocks of {doc['block_len']} tokens, {joining}: "
        f"`{doc['checkpoint']}`, {doc['method']} ({doc['dtype']}). PPL is {AGGREGATION}"
        + ("; ≤ marks an ELBO bound." if bound else "."),
        "",
        "| Model | " + " | ".join(titles) + " |",
        "|---" * (len(titles) + 1) + "|",
        f"| {model} | " + " | ".join(cells) + " |",
        "",
        "| task | split (as checked) | rows | blocks | scored tokens | dropped | NLL/token | PPL | "
        "word PPL | bits/byte |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        word = "n/a" if r["word_ppl"] is None else f"{r['word_ppl']:.2f}"
        bpb = "n/a" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.4f}"
        lines.append(
            f"| {r['title']} | {r['split']} | {r['rows']} | {r['blocks']} | {r['tokens']} | {r['dropped_tokens']} | "
            f"{r['nll_per_token']:.4f} | {bound}{r['ppl']:.2f} | {bound}{word} | {bound}{bpb} |"
        )
    return "\n".join(lines) + "\n"
