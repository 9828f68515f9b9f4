"""The data side of the zero-shot perplexity suite: which rows a benchmark file holds, and the
detokenizers the published protocol applies to them.

SEDD (louaaron/Score-Entropy-Discrete-Diffusion @ 0605786, `data.py`), RADD (ML-GSAI/RADD, the same
`data.py`) and MDLM (kuleshov-group/mdlm, `dataloader.py`) read each benchmark through Hugging Face
`datasets` and treat every dataset row as one document. Nothing here downloads: the user supplies
the files, and `read_rows` turns them into exactly the rows `datasets` would give:

- WikiText (`wikitext-2-raw-v1`, `wikitext-103-raw-v1`, file `wiki.{valid,test,train}.raw`): every
  line is a row, *with* its line break, and a blank line is the empty row `""` (the `datasets`
  builder: `yield {"text": row} if row.strip() else {"text": ""}`).
- PTB (`ptb_text_only`, `ptb.{valid,test}.txt`) and LM1B (`lm1b`, `news.en.heldout-*`): every line,
  stripped (`line.strip()`), blank lines included as `""`.
- LAMBADA (OpenAI's `lambada_test.jsonl`, GPT-2's test file): one passage per JSON record (`text`);
  a plain-text copy gives one passage per non-empty line.

JSON lines and Parquet files (what the hub serves today) are rows already: each record's or row's
field is taken verbatim (`text`, or `sentence` for PTB).

The detokenizers undo the benchmarks' Moses-style tokenization so that a GPT-2-style tokenizer sees
ordinary text. They are the published functions (identical in SEDD, RADD and MDLM), rule for rule
and in order; docs/EVALUATION.md lists them and tests/eval/test_zeroshot.py checks them on fixed
examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..data.errors import DataError
from ..data.prepare.formats import FileFormat, detect_format, open_stream
from ..data.prepare.readers import ReadIssues, iter_lines, iter_text_blocks


def wikitext_detokenize(text: str) -> str:
    """`wt_detokenizer` of SEDD/MDLM (the same as lm-eval's `wikitext_detokenizer`)."""
    # contractions
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)  # literal slashes in the original: matches almost nothing
    # number separators
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    # punctuation
    for mark in (":", ";", ".", "!", "?", ","):
        text = text.replace(f" {mark} ", f"{mark} ")
    # brackets and quotes hug their contents
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    # section markers, degrees, line ends
    text = text.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    text = text.replace(" " + chr(176) + " ", chr(176))
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    text = text.replace(" N ", " 1 ")
    return text.replace(" 's", "'s")


def ptb_detokenize(text: str) -> str:
    """`ptb_detokenizer` of SEDD/MDLM."""
    text = text.replace(" 's", "'s").replace("s ' ", "s' ").replace(" n't", "n't")
    text = text.replace(" \n ", "\n").replace("\\/", "/")
    for _ in range(10):  # the published function repeats this replacement ten times
        text = text.replace(" N ", " 1 ")
    return text.replace("$ 1", "$1").replace("# 1", "#1").replace("<unk>", "?")


def lm1b_detokenize(text: str) -> str:
    """`lm1b_detokenizer` of SEDD/MDLM."""
    text = text.replace("http : / / ", "http://").replace("https : / / ", "https://")
    text = re.sub(r" '(\w+)", r"'\1", text)
    text = re.sub(r" (\w+) \. ", r" \1. ", text)
    text = re.sub(r" (\w+) \.$", r" \1.", text)
    text = text.replace(" ? ", "? ")
    text = re.sub(r" \?$", "?", text)
    text = text.replace(" ! ", "! ")
    text = re.sub(r" \!$", "!", text)
    text = text.replace(" , ", ", ").replace(" : ", ": ").replace(" ; ", "; ").replace(" / ", "/")
    text = re.sub(r"\" ([^\"]+) \"", r'"\1"', text)
    text = re.sub(r"' ([^']+) '", r"'\1'", text)
    text = re.sub(r"\( ([^\(\)]+) \)", r"(\1)", text)
    text = re.sub(r"\[ ([^\[\]]+) \]", r"[\1]", text)
    return text.replace("$ ", "$").replace("£ ", "£")


def lambada_detokenize(text: str) -> str:
    """`lambada_detokenizer` of SEDD/MDLM: curly quotes to straight ones, and every passage starts
    with a line break (so its first token is a newline token)."""
    return "\n" + text.replace("\u201c", '"').replace("\u201d", '"').strip()


@dataclass(frozen=True)
class Benchmark:
    """One column of the paper's Table 1."""

    name: str  # the --task value
    title: str  # the column heading of Table 1
    detokenize: Callable[[str], str]
    line_rule: str  # how a plain-text line becomes a row: "wikitext", "strip" or "passage"
    fields: tuple[str, ...]  # JSON / Parquet field holding the text, first found wins
    splits: dict[str, str]  # protocol -> the split its public code evaluates


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "lambada",
            "LAMBADA",
            lambada_detokenize,
            "passage",
            ("text",),
            {"sedd": "test (OpenAI's lambada_test.jsonl)", "mdlm": "test (OpenAI's lambada_test.jsonl)"},
        ),
        Benchmark(
            "wikitext2",
            "WikiText2",
            wikitext_detokenize,
            "wikitext",
            ("text",),
            {"sedd": "train (RADD's evaluation code; test for every other set)", "mdlm": "validation"},
        ),
        Benchmark("ptb", "PTB", ptb_detokenize, "strip", ("sentence", "text"), {"sedd": "test", "mdlm": "validation"}),
        Benchmark(
            "wikitext103",
            "WikiText103",
            wikitext_detokenize,
            "wikitext",
            ("text",),
            {"sedd": "test", "mdlm": "validation"},
        ),
        Benchmark(
            "lm1b",
            "1BW",
            lm1b_detokenize,
            "strip",
            ("text",),
            {"sedd": "test (all 50 held-out shards)", "mdlm": "test (all 50 held-out shards)"},
        ),
    )
}


def benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise DataError(f"--task {name!r} is not one of {', '.join(BENCHMARKS)}") from None


def _file_format(path: str) -> FileFormat:
    """JSON lines and Parquet by their names; anything else (`wiki.test.raw`, `ptb.test.txt`,
    `news.en.heldout-00000-of-00050`) is text, compressed if its suffix says so."""
    try:
        return detect_format(path)
    except DataError:
        return detect_format(path, "text")


def _line_row(line: str, rule: str) -> str | None:
    if rule == "wikitext":
        return line + "\n" if line.strip() else ""
    if rule == "strip":
        return line.strip()
    return line if line.strip() else None  # passage: blank lines hold no passage


def _field(record: dict, fields: Sequence[str], where: str) -> str:
    for name in fields:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise DataError(f"{where}: field '{name}' is {type(value).__name__}, expected a string")
            return value
    raise DataError(f"{where}: no field {' or '.join(repr(f) for f in fields)} (it has: {', '.join(sorted(record))})")


def _parquet_rows(path: str, fields: Sequence[str]) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path} is Parquet: install pyarrow (pip install 'armd_scale[parquet]')") from None
    with open_stream(path, None) as stream:
        pf = pq.ParquetFile(stream)
        names = pf.schema_arrow.names
        column = next((f for f in fields if f in names), None)
        if column is None:
            raise DataError(f"{path}: no column {' or '.join(repr(f) for f in fields)} (it has: {', '.join(names)})")
        for batch in pf.iter_batches(batch_size=1024, columns=[column]):
            for value in batch.column(0).to_pylist():
                if not isinstance(value, str):
                    raise DataError(f"{path}: column '{column}' holds {type(value).__name__} in a row, expected text")
                yield value


def read_rows(path: str, bench: Benchmark) -> Iterator[str]:
    """The rows of one benchmark file, in file order, as `datasets` would give them (module docstring)."""
    import json

    fmt = _file_format(path)
    if fmt.kind == "parquet":
        yield from _parquet_rows(path, bench.fields)
        return
    issues = ReadIssues(path)
    with open_stream(path, fmt.compression) as stream:
        lines = iter_lines(iter_text_blocks(stream, issues))
        for number, (line, terminated) in enumerate(lines, start=1):
            if not terminated and line == "":
                break  # the end of a file that ends with a line break: no row, as `for line in f`
            if fmt.kind == "jsonl":
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                yield _field(record, bench.fields, f"{path}:{number}")
                continue
            row = _line_row(line, bench.line_rule)
            if row is not None:
                yield row
    issues.report()
