"""`armd eval zeroshot`: the zero-shot perplexity protocol of SEDD / RADD / MDLM (the paper's Table 1).

Per benchmark, from the user's local files (eval/zeroshot_data.py): rows -> the benchmark's
detokenizer -> the checkpoint's tokenizer -> the separator appended to every row -> all rows
concatenated in file order (globally, not per 1000-row `datasets.map` batch as the published code
does) -> cut into blocks of L tokens (L = the run's training length unless `block_len` is given),
the remainder dropped. Two named protocols (docs/EVALUATION.md lists every difference):

- `sedd` (SEDD/RADD, `data.py:get_dataset`): blocks are L consecutive tokens, no BOS; every
  position is scored.
- `mdlm` (MDLM, `dataloader.py:_group_texts` with `wrap=True`): blocks are [BOS] + L-2 tokens +
  [EOS]. A left-to-right model scores positions 1..L-1 (BOS is context, as MDLM's AR rows);
  the diffusion baseline scores all L positions, BOS and EOS included, as MDLM's `_loss` does.

Scores: `armd` and `ar` give the exact left-to-right NLL of each block (one forward pass); `mdlm`
gives a negative ELBO, an upper bound labelled `elbo` everywhere: by default the continuous-time bound
MDLM's tables report (`steps=0`; K draws of the time per block, K forward passes), or the T-step
bound as an ablation (`steps=T`, T forward passes per block). Aggregation is token-weighted:
PPL = exp(sum of NLL over all blocks / scored tokens), per benchmark. Per-word and per-byte figures
divide the same total NLL by the words (whitespace-separated, of the detokenized text the blocks
cover) and the UTF-8 bytes of the scored tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from ..data.errors import DataError
from ..data.tokenizers.base import Tokenizer
from ..model import Model
from ..model.generation_orders import l2r_order
from ..model.masked_diffusion import continuous_draws, continuous_nelbo, discrete_nelbo
from ..rng import seeded
from .likelihood import position_nll
from .text import bits_per_byte, codec_for
from .zeroshot_data import BENCHMARKS, Benchmark, benchmark, read_rows

PROTOCOLS = ("sedd", "mdlm")
AGGREGATION = "token-weighted: exp(total NLL / scored tokens) over all blocks of a benchmark"


@dataclass
class Blocks:
    """One benchmark wrapped into blocks under a protocol."""

    tokens: np.ndarray  # [n, L] int64
    rows: int  # dataset rows read
    stream_tokens: int  # tokens of all rows, separators included
    dropped: int  # tokens of the remainder that fills no block
    words: int  # whitespace-separated words of the text the blocks cover
    bos: int | None  # the BOS id the mdlm protocol wraps with (None for sedd)


def _separator(codec: Tokenizer) -> int:
    if not codec.has_text or codec.eos_id is None:
        raise DataError("the zero-shot suite needs a checkpoint with a text tokenizer (this one has ids only)")
    return codec.eos_id


def _bos_id(codec: Tokenizer) -> int:
    """MDLM wraps blocks with `tokenizer.bos_token` (GPT-2: <|endoftext|>, the separator itself)."""
    return _separator(codec) if codec.bos_id is None else int(codec.bos_id)


def _count_words(stream: Sequence[int], codec: Tokenizer) -> int:
    """Words of the text `stream` stands for: decoded between separators, so two documents never
    merge into one word."""
    words, start = 0, 0
    for end in [i for i, t in enumerate(stream) if t == codec.eos_id] + [len(stream)]:
        if end > start:
            words += len(codec.decode(stream[start:end]).split())
        start = end + 1
    return words


def wrap_blocks(rows: Iterable[str], bench: Benchmark, codec: Tokenizer, block_len: int, protocol: str) -> Blocks:
    """Detokenize, tokenize, append the separator to every row, concatenate, cut into blocks."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    separator = _separator(codec)
    stream: list[int] = []
    count = 0
    for row in rows:
        stream.extend(codec.encode(bench.detokenize(row)))
        stream.append(separator)
        count += 1
    content = block_len if protocol == "sedd" else block_len - 2
    if content < 1:
        raise DataError(f"block length {block_len} leaves no room for text under protocol {protocol}")
    n = len(stream) // content
    if n == 0:
        raise DataError(
            f"{bench.name}: {count} rows give {len(stream)} tokens, less than one block of {block_len}; "
            "pass more text or a smaller --block-len"
        )
    kept = np.asarray(stream[: n * content], dtype=np.int64).reshape(n, content)
    bos = None
    if protocol == "mdlm":
        bos = _bos_id(codec)
        kept = np.concatenate([np.full((n, 1), bos), kept, np.full((n, 1), separator)], axis=1)
    return Blocks(kept, count, len(stream), len(stream) - n * content, _count_words(stream[: n * content], codec), bos)


def scored_from(protocol: str, exact: bool) -> int:
    """First scored position of a block: the mdlm protocol gives l2r models (exact likelihoods) BOS as
    context only; a masked-diffusion bound scores the whole block, BOS included, as MDLM does."""
    return 1 if protocol == "mdlm" and exact else 0


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
    bound) the negative ELBO: continuous time with `samples` draws per block (steps=0; block i's noise is
    a function of (seed, i), whatever the batch size), or the T-step bound (steps=T)."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    generator = seeded(seed)
    n, length = blocks.shape
    order, block = l2r_order(1, length)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
        x = torch.as_tensor(blocks[start : start + batch_size], dtype=torch.long, device=device)
        if model.likelihood_kind == "bound":
            assert model.mask_id is not None and steps is not None  # evaluate_zeroshot checks both
            if steps == 0:
                rates, uniforms = continuous_draws(seed, range(start, start + x.shape[0]), samples, length)
                total += continuous_nelbo(model, x, rates, uniforms, model.mask_id).sum()
            else:
                total += discrete_nelbo(model, x, steps, model.mask_id, generator).double().sum()
        else:
            total += position_nll(model, x, order[0], block[0], dtype)[:, first:].sum()
    return float(total)


def _task_result(
    bench: Benchmark, paths: Sequence[str], blocks: Blocks, nll: float, first: int, codec: Tokenizer, protocol: str
) -> dict[str, Any]:
    scored = blocks.tokens[:, first:]
    tokens = int(scored.size)
    table = codec.byte_lengths()
    num_bytes = int(table[scored].sum()) if table is not None else None
    per_token = nll / tokens
    return {
        "task": bench.name,
        "title": bench.title,
        "split": bench.splits[protocol],
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
) -> dict[str, Any]:
    """The `armd eval zeroshot` document: `tasks` is [(benchmark name, [files])], in table order or not."""
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
    results = []
    for bench, paths in benches:
        if not paths:
            raise DataError(f"--task {bench.name} has no --data files")
        rows = (row for path in paths for row in read_rows(path, bench))
        blocks = wrap_blocks(rows, bench, codec, length, protocol)
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
        results.append(_task_result(bench, paths, blocks, nll, first, codec, protocol))
    return {
        "protocol": protocol,
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
        "bos_id": None if protocol == "sedd" else _bos_id(codec),
        "separator_id": _separator(codec),
        "tokenizer_sha256": codec.sha256 or None,
        "dtype": str(dtype).removeprefix("torch."),
        "seed": seed,
        "aggregation": AGGREGATION,
        "results": results,
    }


def _method(exact: bool, steps: int | None, samples: int | None) -> str:
    """The estimator in words, for the document and the table's caption."""
    if exact:
        return "exact left-to-right NLL"
    if steps == 0:
        draws = f"K={samples} draw{'s' if samples != 1 else ''} of the time per block"
        return f"negative ELBO, continuous time, {draws} (upper bound in expectation)"
    return f"negative ELBO, T={steps} discrete steps, every step's term per block (upper bound in expectation)"


def markdown_table(doc: dict[str, Any]) -> str:
    """Table 1's layout (one row: this checkpoint), then the per-benchmark details."""
    by_task = {r["task"]: r for r in doc["results"]}
    bound = "≤" if doc["likelihood"] == "elbo" else ""
    titles = [b.title for b in BENCHMARKS.values()]
    cells = [f"{bound}{by_task[name]['ppl']:.2f}" if name in by_task else "–" for name in BENCHMARKS]
    model = f"{doc['arch']} (step {doc['step']})"
    lines = [
        f"Zero-shot perplexity, protocol `{doc['protocol']}`, blocks of {doc['block_len']} tokens: "
        f"`{doc['checkpoint']}`, {doc['method']} ({doc['dtype']}). PPL is {AGGREGATION}"
        + ("; ≤ marks an ELBO bound." if bound else "."),
        "",
        "| Model | " + " | ".join(titles) + " |",
        "|---" * (len(titles) + 1) + "|",
        f"| {model} | " + " | ".join(cells) + " |",
        "",
        "| task | split the protocol uses | rows | blocks | scored tokens | dropped | NLL/token | PPL | "
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
