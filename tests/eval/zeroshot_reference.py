"""A reference for `armd eval zeroshot`, written from the published code and nothing else (tests only:
the package never imports it, and it imports nothing from the package).

It writes down the published rules themselves, so that armd_scale's implementation
(armd_scale/eval/zeroshot_data.py, armd_scale/eval/zeroshot_blocks.py) can be compared with them:

- every detokenizer as a table of its rules, one entry per statement of the published function, in
  order, applied by a small interpreter (`detokenize`), with the function it transcribes;
- how the published code turns rows into blocks: tokenize every row (`map` #1), then group the
  tokenized rows (`map` #2, `batched=True`, default batch_size 1000, `num_proc` workers), where
  `datasets` gives each worker a contiguous shard of the rows and the grouping function joins and
  cuts each 1000-row batch of its shard on its own, dropping that batch's remainder.

Sources (repository@commit, file, function):
- SEDD: louaaron/Score-Entropy-Discrete-Diffusion@0605786da5ccb5747545e26d66fdf477187598b6, `data.py`:
  `wt_detokenizer`, `ptb_detokenizer`, `lm1b_detokenizer`, `lambada_detokenizer`, `get_dataset`
  (tokenize: GPT-2 ids + EOS per row; `group_texts`: blocks of L, remainder dropped; both maps
  with `batched=True, num_proc=8`).
- MDLM: kuleshov-group/mdlm@c112c526d193436838c98d81455ee51f90309470, `dataloader.py`: the same four
  detokenizers, `scientific_papers_detokenizer`, `get_dataset` (`wrap=True`: ids + [EOS] per row,
  `add_special_tokens=False`; text column `sentence` for ptb, `article` for scientific_papers,
  `text` otherwise; no detokenizer for ag_news), `_group_texts` ([BOS] + L-2 + [EOS] blocks, the
  remainder dropped), both maps with `batched=True, num_proc=len(os.sched_getaffinity(0))`.
- BD3-LM: kuleshov-group/bd3lms@1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7, `dataloader.py`
  (`get_dataset` with `insert_eos=False`, set by `scripts/zs_ppl/ppl_zs_owt_*.sh` as
  `+data.insert_valid_eos=False`: no EOS after a row; `insert_special_tokens` left True:
  `_group_texts` still wraps [BOS] + L-2 + [EOS]).
- `datasets` (read in release 5.2.0, `arrow_dataset.py`): `Dataset.map` lowers `num_proc` to the row count
  and splits the rows with `Dataset.shard(num_shards, index, contiguous=True)`, whose shard `index`
  holds rows [d*index + min(index, m), that + d + (index < m)) with d, m = divmod(rows, num_shards);
  `_map_single` then calls the function on rows [i, i + batch_size) of the shard for i in
  range(0, len(shard), batch_size), the last batch shorter (drop_last_batch=False).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

SEDD = "louaaron/Score-Entropy-Discrete-Diffusion@0605786da5ccb5747545e26d66fdf477187598b6"
MDLM = "kuleshov-group/mdlm@c112c526d193436838c98d81455ee51f90309470"
BD3LM = "kuleshov-group/bd3lms@1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7"

# A rule: ("str", old, new) is str.replace; ("re", pattern, repl) is re.sub; ("strip",) is str.strip();
# ("prefix", s) puts s in front; ("call", name) applies another table by name.
Rule = tuple[str, ...]

# SEDD data.py:wt_detokenizer == MDLM dataloader.py:wt_detokenizer
WIKITEXT: tuple[Rule, ...] = (
    ("str", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    ("str", " @-@ ", "-"),
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " . ", ". "),
    ("str", " ! ", "! "),
    ("str", " ? ", "? "),
    ("str", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("str", "= = = =", "===="),
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " \u00b0 ", "\u00b0"),
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
)

# SEDD data.py:ptb_detokenizer == MDLM dataloader.py:ptb_detokenizer; the loop runs its replace 10 times
PTB: tuple[Rule, ...] = (
    ("str", " 's", "'s"),
    ("str", "s ' ", "s' "),
    ("str", " n't", "n't"),
    ("str", " \n ", "\n"),
    ("str", "\\/", "/"),
    *((("str", " N ", " 1 "),) * 10),
    ("str", "$ 1", "$1"),
    ("str", "# 1", "#1"),
    ("str", "<unk>", "?"),
)

# SEDD data.py:lm1b_detokenizer == MDLM dataloader.py:lm1b_detokenizer
LM1B: tuple[Rule, ...] = (
    ("str", "http : / / ", "http://"),
    ("str", "https : / / ", "https://"),
    ("re", r" '(\w+)", r"'\1"),
    ("re", r" (\w+) \. ", r" \1. "),
    ("re", r" (\w+) \.$", r" \1."),
    ("str", " ? ", "? "),
    ("re", r" \?$", "?"),
    ("str", " ! ", "! "),
    ("re", r" \!$", "!"),
    ("str", " , ", ", "),
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " / ", "/"),
    ("re", r"\" ([^\"]+) \"", r'"\1"'),
    ("re", r"' ([^']+) '", r"'\1'"),
    ("re", r"\( ([^\(\)]+) \)", r"(\1)"),
    ("re", r"\[ ([^\[\]]+) \]", r"[\1]"),
    ("str", "$ ", "$"),
    ("str", "\u00a3 ", "\u00a3"),
)

# SEDD data.py:lambada_detokenizer == MDLM dataloader.py:lambada_detokenizer
LAMBADA: tuple[Rule, ...] = (
    ("str", "\u201c", '"'),
    ("str", "\u201d", '"'),
    ("strip",),
    ("prefix", "\n"),
)

# MDLM dataloader.py:scientific_papers_detokenizer: wt_detokenizer, then lm1b_detokenizer
SCIENTIFIC_PAPERS: tuple[Rule, ...] = (("call", "wikitext"), ("call", "lm1b"))

TABLES: dict[str, tuple[Rule, ...]] = {
    "wikitext": WIKITEXT,
    "ptb": PTB,
    "lm1b": LM1B,
    "lambada": LAMBADA,
    "scientific_papers": SCIENTIFIC_PAPERS,
    "none": (),  # MDLM dataloader.py:get_dataset: `detokenizer = None` for ag_news
}

# which table each --task gets (SEDD/MDLM get_dataset's if-chain on the dataset name) and the column read
TASK_TABLE = {
    "wikitext2": "wikitext",
    "wikitext103": "wikitext",
    "ptb": "ptb",
    "lm1b": "lm1b",
    "lambada": "lambada",
    "ag_news": "none",
    "pubmed": "scientific_papers",
    "arxiv": "scientific_papers",
}
TASK_COLUMN = {"ptb": "sentence", "pubmed": "article", "arxiv": "article"}  # "text" otherwise


def apply_rule(rule: Rule, text: str, fired: dict[tuple[str, int], int] | None = None) -> str:
    kind = rule[0]
    if kind == "str":
        return text.replace(rule[1], rule[2])
    if kind == "re":
        return re.sub(rule[1], rule[2], text)
    if kind == "strip":
        return text.strip()
    if kind == "prefix":
        return rule[1] + text
    if kind == "call":
        return detokenize_with(rule[1], text, fired)
    raise AssertionError(f"unknown rule kind {kind}")


def detokenize_with(table: str, text: str, fired: dict[tuple[str, int], int] | None = None) -> str:
    """Apply a table's rules in order; `fired` counts, per (table, rule index), the rows it changed."""
    for index, rule in enumerate(TABLES[table]):
        after = apply_rule(rule, text, fired)
        if fired is not None and after != text:
            fired[(table, index)] = fired.get((table, index), 0) + 1
        text = after
    return text


def detokenize(task: str, text: str, fired: dict[tuple[str, int], int] | None = None) -> str:
    return detokenize_with(TASK_TABLE[task], text, fired)


# --- rows -> blocks -----------------------------------------------------------------------------------


def contiguous_shards(rows: int, num_proc: int) -> list[range]:
    """`Dataset.map(num_proc=...)`'s worker shards: num_proc lowered to the row count, shard sizes
    differing by at most one, the larger ones first."""
    workers = max(1, min(num_proc, rows))
    base, extra = divmod(rows, workers)
    shards, start = [], 0
    for worker in range(workers):
        size = base + (1 if worker < extra else 0)
        shards.append(range(start, start + size))
        start += size
    return shards


def map_batches(rows: int, num_proc: int, batch_size: int | None = 1000) -> list[range]:
    """The row ranges one call of a `map(batched=True, batch_size, num_proc)` function sees, in order;
    batch_size None: a whole shard per call (as `datasets` does for None or <= 0)."""
    batches = []
    for shard in contiguous_shards(rows, num_proc):
        step = len(shard) if not batch_size or batch_size <= 0 else batch_size
        for offset in range(0, len(shard), max(step, 1)):
            batches.append(shard[offset : offset + step])
    return batches


def tokenize_row(ids: list[int], eos: int, protocol: str) -> list[int]:
    """Map #1 per row: SEDD `token.append(EOS)`; MDLM `t + [EOS]`; BD3-LM's zero-shot run (insert_eos
    False) adds nothing."""
    return list(ids) if protocol == "bd3lm" else list(ids) + [eos]


def group_batch(batch: Sequence[list[int]], block_len: int, protocol: str, bos: int, eos: int) -> list[list[int]]:
    """Map #2 on one batch: SEDD `group_texts` (blocks of L) or MDLM/BD3-LM `_group_texts`
    ([BOS] + L-2 + [EOS]); the batch's remainder is dropped."""
    joined = [token for row in batch for token in row]
    if protocol == "sedd":
        usable = len(joined) - len(joined) % block_len
        return [joined[i : i + block_len] for i in range(0, usable, block_len)]
    inner = block_len - 2
    usable = len(joined) // inner * inner
    return [[bos] + joined[i : i + inner] + [eos] for i in range(0, usable, inner)]


def reference_blocks(
    rows: Sequence[str],
    task: str,
    encode: Callable[[str], list[int]],
    *,
    bos: int,
    eos: int,
    block_len: int,
    protocol: str,
    num_proc: int,
    batch_size: int | None = 1000,
) -> tuple[list[list[int]], int]:
    """The blocks the published pipeline makes from `rows`, and the tokens it drops."""
    tokenized = [tokenize_row(encode(detokenize(task, row)), eos, protocol) for row in rows]
    blocks: list[list[int]] = []
    dropped = 0
    for batch in map_batches(len(rows), num_proc, batch_size):
        rows_of_batch = [tokenized[i] for i in batch]
        made = group_batch(rows_of_batch, block_len, protocol, bos, eos)
        blocks += made
        inner = block_len if protocol == "sedd" else block_len - 2
        dropped += sum(len(r) for r in rows_of_batch) - inner * len(made)
    return blocks, dropped
