"""`armd eval zeroshot`: the zero-shot perplexity protocols of SEDD / RADD, MDLM and BD3-LM.

Per benchmark, from the user's local files (eval/zeroshot_data.py): rows -> the benchmark's
detokenizer -> the checkpoint's tokenizer -> (sedd, mdlm) the separator appended to every row ->
rows joined -> cut into blocks of L tokens (L = the run's training length unless `block_len` is
given), the remainder dropped. Three named protocols, each after the table it matches
(docs/EVALUATION.md lists every difference):

- `sedd`, SEDD/RADD's Table 1 protocol (SEDD `data.py:get_dataset`): blocks are L consecutive
  tokens, no BOS; every position is scored.
- `mdlm`, MDLM's Tables 1/3 protocol (MDLM `dataloader.py:_group_texts`, `wrap=True`): blocks are
  [BOS] + L-2 tokens + [EOS]. A left-to-right model scores positions 1..L-1 (BOS is context, as
  MDLM's AR rows); the diffusion baseline scores all L positions, BOS and EOS included, as MDLM's
  `_loss` does.
- `bd3lm`, BD3-LM's zero-shot table (bd3lms `scripts/zs_ppl/*.sh` with `data.insert_valid_eos=False`,
  `dataloader.py:get_dataset` and `_group_texts`): no separator after a row (rows run into each
  other), blocks are [BOS] + L-2 tokens + [EOS], and BOS is never scored: left-to-right models score
  1..L-1 as above, and the diffusion bound keeps BOS unmasked and unscored (`algo.ignore_bos=True`
  in `diffusion.py:_forward_pass_diffusion` and `_loss`), so it scores 1..L-1 too.

Joining: with `num_proc=None` (the clean form) all rows of a benchmark form one stream, in file
order. With `num_proc=N` the published per-batch joining is reproduced: their grouping runs in
`datasets.map(batched=True, num_proc=N)`, which splits the rows into min(N, rows) contiguous shards
(`Dataset.shard(contiguous=True)`) and hands each shard's rows to the grouping function 1000 at a
time (map's default batch_size); every batch is joined and cut separately and drops its own
remainder (`join_groups`).

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
from .zeroshot_data import BENCHMARKS, TABLE_1, TABLE_3_EXTRA, Benchmark, benchmark, read_rows
from .zeroshot_inputs import Fingerprint, Verification, fingerprint, verify

PROTOCOLS = ("sedd", "mdlm", "bd3lm")
# the published table each protocol reproduces: docstrings, CLI help, the markdown and docs name it so
PROTOCOL_TABLES = {
    "sedd": "SEDD/RADD's Table 1 protocol",
    "mdlm": "MDLM's Tables 1/3 protocol",
    "bd3lm": "BD3-LM's zero-shot table",
}
# `datasets.Dataset.map(batched=True)`'s default batch_size: the rows one grouping call joins
MAP_BATCH_SIZE = 1000
AGGREGATION = "token-weighted: exp(total NLL / scored tokens) over all blocks of a benchmark"


@dataclass
class Blocks:
    """One benchmark wrapped into blocks under a protocol."""

    tokens: np.ndarray  # [n, L] int64
    rows: int  # dataset rows read
    stream_tokens: int  # tokens of all rows, separators included
    text_tokens: int  # tokens of all rows, without the separators
    dropped: int  # tokens of the remainders that fill no block (summed over the joined groups)
    words: int  # whitespace-separated words of the detokenized rows the blocks cover
    bos: int | None  # the BOS id the mdlm and bd3lm protocols wrap with (None for sedd)
    num_proc: int | None = None  # None: one stream; N: per 1000-row batch of N contiguous shards
    groups: int = 1  # row ranges joined separately


def _separator(codec: Tokenizer) -> int:
    if not codec.has_text or codec.eos_id is None:
        raise DataError("the zero-shot suite needs a checkpoint with a text tokenizer (this one has ids only)")
    return codec.eos_id


def _bos_id(codec: Tokenizer) -> int:
    """MDLM and BD3-LM wrap blocks with `tokenizer.bos_token` (GPT-2: <|endoftext|>, the separator itself)."""
    return _separator(codec) if codec.bos_id is None else int(codec.bos_id)


def shard_bounds(rows: int, num_proc: int) -> list[tuple[int, int]]:
    """The row ranges `datasets.Dataset.map(num_proc=num_proc)` gives its workers: num_proc is cut to
    the row count, and shard i of k is `Dataset.shard(k, i, contiguous=True)`: with d, m = divmod(rows, k)
    it starts at d*i + min(i, m) and holds d rows, plus one for the first m shards."""
    if num_proc < 1:
        raise ValueError(f"--num-proc {num_proc} must be >= 1")
    k = min(num_proc, rows) or 1
    div, mod = divmod(rows, k)
    bounds = []
    for i in range(k):
        start = div * i + min(i, mod)
        bounds.append((start, start + div + (1 if i < mod else 0)))
    return bounds


def join_groups(rows: int, num_proc: int | None) -> list[tuple[int, int]]:
    """The row ranges whose tokens are joined into one stream and cut separately. None: all rows, one
    stream. N: each contiguous shard of N (`shard_bounds`) in batches of MAP_BATCH_SIZE rows from the
    shard's start (the last batch of a shard may be shorter), as `datasets.map(batched=True)` calls
    the grouping function; with N = 1 that is still one call per 1000 rows."""
    if num_proc is None:
        return [(0, rows)]
    return [
        (b, min(b + MAP_BATCH_SIZE, end))
        for start, end in shard_bounds(rows, num_proc)
        for b in range(start, end, MAP_BATCH_SIZE)
    ]


def _count_words(pieces: Iterable[np.ndarray], codec: Tokenizer) -> int:
    """Words of the text the pieces (each a row's kept tokens, without separator) stand for: decoded
    row by row, so two documents never merge into one word."""
    return sum(len(codec.decode(piece).split()) for piece in pieces if len(piece))


def wrap_blocks(
    rows: Iterable[str],
    bench: Benchmark,
    codec: Tokenizer,
    block_len: int,
    protocol: str,
    num_proc: int | None = None,
) -> Blocks:
    """Detokenize and tokenize every row, append the separator (sedd, mdlm; not bd3lm), join the rows
    of each group (`join_groups`), cut each group into blocks (mdlm, bd3lm: wrapped in BOS ... EOS) and
    drop each group's remainder."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"--num-proc {num_proc} must be >= 1 (or left out for one stream)")
    separator = _separator(codec)
    content = block_len if protocol == "sedd" else block_len - 2
    if content < 1:
        raise DataError(f"block length {block_len} leaves no room for text under protocol {protocol}")
    # every row's ids, the row's tail (the separator; none for bd3lm) included: a row is one document
    tail = np.asarray([] if protocol == "bd3lm" else [separator], dtype=np.int64)
    encoded = [
        np.concatenate([np.asarray(codec.encode(bench.detokenize(text)), dtype=np.int64), tail]) for text in rows
    ]
    stream_tokens = sum(len(ids) for ids in encoded)
    groups = join_groups(len(encoded), num_proc)
    chunks: list[np.ndarray] = []
    dropped = words = 0
    for start, end in groups:
        group = encoded[start:end]
        total = sum(len(ids) for ids in group)
        n = total // content
        kept = n * content
        dropped += total - kept
        if n:
            chunks.append(np.concatenate(group)[:kept].reshape(n, content))
        pieces, offset = [], 0
        for ids in group:  # the kept part of each row, without its tail
            if offset >= kept:
                break
            pieces.append(ids[: min(len(ids) - len(tail), kept - offset)])
            offset += len(ids)
        words += _count_words(pieces, codec)
    if not chunks:
        per = "" if num_proc is None else f" (joined per {MAP_BATCH_SIZE}-row batch of {len(groups)} groups)"
        raise DataError(
            f"{bench.name}: {len(encoded)} rows give {stream_tokens} tokens{per}, less than one block of {block_len}; "
            "pass more text or a smaller --block-len"
        )
    kept_blocks = np.concatenate(chunks, axis=0)
    bos = None
    if protocol != "sedd":
        bos = _bos_id(codec)
        n = kept_blocks.shape[0]
        kept_blocks = np.concatenate([np.full((n, 1), bos), kept_blocks, np.full((n, 1), separator)], axis=1)
    text_tokens = stream_tokens - len(tail) * len(encoded)
    return Blocks(kept_blocks, len(encoded), stream_tokens, text_tokens, dropped, words, bos, num_proc, len(groups))


def scored_from(protocol: str, exact: bool) -> int:
    """First scored position of a block. sedd: 0. mdlm: l2r models (exact likelihoods) take BOS as
    context only (1); a masked-diffusion bound scores the whole block, BOS included, as MDLM does (0).
    bd3lm: 1 for both (BD3-LM's `ignore_bos`: the bound keeps BOS unmasked and unscored)."""
    if protocol == "sedd":
        return 0
    if protocol == "mdlm":
        return 1 if exact else 0
    return 1


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
                total += continuous_nelbo(model, x, rates, uniforms, model.mask_id, first).sum()
            else:
                total += discrete_nelbo(model, x, steps, model.mask_id, generator, first).double().sum()
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
        "bos_id": None if protocol == "sedd" else _bos_id(codec),
        "separator_id": _separator(codec),
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
