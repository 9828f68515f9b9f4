"""The blocks of the zero-shot protocols: how a benchmark's rows become the token blocks a model scores.

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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..data.errors import DataError
from ..data.tokenizers.base import Tokenizer
from .zeroshot_data import Benchmark

PROTOCOLS = ("sedd", "mdlm", "bd3lm")
# the published table each protocol reproduces: docstrings, CLI help, the markdown and docs name it so
PROTOCOL_TABLES = {
    "sedd": "SEDD/RADD's Table 1 protocol",
    "mdlm": "MDLM's Tables 1/3 protocol",
    "bd3lm": "BD3-LM's zero-shot table",
}
# `datasets.Dataset.map(batched=True)`'s default batch_size: the rows one grouping call joins
MAP_BATCH_SIZE = 1000


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


def separator_id(codec: Tokenizer) -> int:
    if not codec.has_text or codec.eos_id is None:
        raise DataError("the zero-shot suite needs a checkpoint with a text tokenizer (this one has ids only)")
    return codec.eos_id


def wrapper_bos_id(codec: Tokenizer) -> int:
    """MDLM and BD3-LM wrap blocks with `tokenizer.bos_token` (GPT-2: <|endoftext|>, the separator itself)."""
    return separator_id(codec) if codec.bos_id is None else int(codec.bos_id)


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
    separator = separator_id(codec)
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
        bos = wrapper_bos_id(codec)
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
