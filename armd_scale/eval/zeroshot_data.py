"""The data side of the zero-shot perplexity suite: which rows a benchmark file holds, and the
detokenizers the published protocol applies to them.

SEDD (louaaron/Score-Entropy-Discrete-Diffusion @ 0605786, `data.py`), RADD (ML-GSAI/RADD, the same
`data.py`), MDLM (kuleshov-group/mdlm @ c112c52, `dataloader.py`) and BD3-LM (kuleshov-group/bd3lms
@ 1c3e8f4, `dataloader.py`) read each benchmark through Hugging Face `datasets` and treat every
dataset row as one document. Nothing here downloads: the user supplies
the files, and `read_rows` turns them into exactly the rows `datasets` would give:

- WikiText (`wikitext-2-raw-v1`, `wikitext-103-raw-v1`, file `wiki.{valid,test,train}.raw`): every
  line is a row, *with* its line break, and a blank line is the empty row `""` (the `datasets`
  builder: `yield {"text": row} if row.strip() else {"text": ""}`).
- PTB (`ptb_text_only`, `ptb.{valid,test}.txt`) and LM1B (`lm1b`, `news.en.heldout-*`): every line,
  stripped (`line.strip()`), blank lines included as `""`.
- LAMBADA (OpenAI's `lambada_test.jsonl`, GPT-2's test file): one passage per JSON record (`text`);
  a plain-text copy gives one passage per non-empty line (and is refused by the input check,
  eval/zeroshot_inputs.py, unless the user allows unverified inputs).
- AG News (`ag_news`, test split; MDLM's Table 3): the hub's Parquet/JSON lines (`text`), or the
  original `test.csv` (class, title, description; the `datasets` builder reads it with
  `csv.reader(quotechar='"', delimiter=",", quoting=QUOTE_ALL, skipinitialspace=True)` and makes
  the row `title + " " + description`).
- PubMed and ArXiv (`scientific_papers`, configs `pubmed` and `arxiv`, validation split; MDLM's
  Table 3): MDLM reads the `article` column. The hub's Parquet/JSON lines hold it; the original
  `val.txt` is JSON lines whose `article_text` is a list of paragraphs, which the builder joins with
  line breaks (`"\n".join(d["article_text"])`), and so does `read_rows`.

JSON lines and Parquet files (what the hub serves today) are rows already: each record's or row's
field is taken verbatim (`text`, `sentence` for PTB, `article` for the scientific papers).

The detokenizers undo the benchmarks' Moses-style tokenization so that a GPT-2-style tokenizer sees
ordinary text. They are the published functions (identical in SEDD, RADD, MDLM and BD3-LM), rule
for rule and in order; MDLM and BD3-LM apply no detokenizer to AG News and, to the scientific papers,
the WikiText one followed by the LM1B one (`scientific_papers_detokenizer`). docs/EVALUATION.md lists
them; tests/eval/test_zeroshot.py checks them on fixed examples and tests/eval/zeroshot_reference.py
transcribes the published code to compare against, row by row.
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


def scientific_papers_detokenize(text: str) -> str:
    """`scientific_papers_detokenizer` of MDLM/BD3-LM (PubMed, ArXiv): the WikiText detokenizer, then
    the LM1B one."""
    return lm1b_detokenize(wikitext_detokenize(text))


def no_detokenize(text: str) -> str:
    """AG News: MDLM and BD3-LM apply no detokenizer (`detokenizer = None`)."""
    return text


@dataclass(frozen=True)
class Benchmark:
    """One column of the papers' zero-shot tables (Table 1 of SEDD/RADD, Table 3 of MDLM)."""

    name: str  # the --task value
    title: str  # the column heading in the published table
    detokenize: Callable[[str], str]
    # how a plain-text file becomes rows: per line "wikitext", "strip" or "passage"; "json" (every
    # non-blank line is a JSON record, as the scientific papers' original val.txt); "csv" (the whole
    # file is AG News' original CSV)
    line_rule: str
    fields: tuple[str, ...]  # JSON / Parquet field holding the text, first found wins
    list_fields: tuple[str, ...] = ()  # JSON fields holding a list of paragraphs, joined with "\n"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("lambada", "LAMBADA", lambada_detokenize, "passage", ("text",)),
        Benchmark("wikitext2", "WikiText2", wikitext_detokenize, "wikitext", ("text",)),
        Benchmark("ptb", "PTB", ptb_detokenize, "strip", ("sentence", "text")),
        Benchmark("wikitext103", "WikiText103", wikitext_detokenize, "wikitext", ("text",)),
        Benchmark("lm1b", "1BW", lm1b_detokenize, "strip", ("text",)),
        Benchmark("ag_news", "AG News", no_detokenize, "csv", ("text",)),
        Benchmark(
            "pubmed",
            "Pubmed",
            scientific_papers_detokenize,
            "json",
            ("article",),
            list_fields=("article_text",),
        ),
        Benchmark("arxiv", "Arxiv", scientific_papers_detokenize, "json", ("article",), list_fields=("article_text",)),
    )
}

# the column order of the papers' tables: SEDD/RADD's Table 1, then the columns MDLM's Table 3 adds
TABLE_1 = ("lambada", "wikitext2", "ptb", "wikitext103", "lm1b")
TABLE_3_EXTRA = ("ag_news", "pubmed", "arxiv")


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


def _field(record: dict, bench: Benchmark, where: str) -> str:
    for name in bench.fields:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise DataError(f"{where}: field '{name}' is {type(value).__name__}, expected a string")
            return value
    for name in bench.list_fields:
        if name in record:
            value = record[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(f"{where}: field '{name}' is {type(value).__name__}, expected a list of strings")
            return "\n".join(value)
    names = " or ".join(repr(f) for f in bench.fields + bench.list_fields)
    raise DataError(f"{where}: no field {names} (it has: {', '.join(sorted(record))})")


def _json_record(line: str, bench: Benchmark, where: str) -> str:
    import json

    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return _field(record, bench, where)


def _csv_rows(path: str, compression: str | None) -> Iterator[str]:
    """AG News' original CSV: `title + " " + description` of every (class, title, description) record,
    read as the `datasets` builder reads it (universal newlines, `QUOTE_ALL`, `skipinitialspace`)."""
    import csv
    import io

    with open_stream(path, compression) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8")
        reader = csv.reader(text, quotechar='"', delimiter=",", quoting=csv.QUOTE_ALL, skipinitialspace=True)
        for number, record in enumerate(reader, start=1):
            if len(record) != 3:
                raise DataError(
                    f"{path}: CSV record {number} has {len(record)} fields, expected 3 (class, title, description)"
                )
            yield record[1] + " " + record[2]


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
    fmt = _file_format(path)
    if fmt.kind == "parquet":
        yield from _parquet_rows(path, bench.fields)
        return
    if fmt.kind == "text" and bench.line_rule == "csv":
        yield from _csv_rows(path, fmt.compression)
        return
    as_json = fmt.kind == "jsonl" or bench.line_rule == "json"
    issues = ReadIssues(path)
    with open_stream(path, fmt.compression) as stream:
        lines = iter_lines(iter_text_blocks(stream, issues))
        for number, (line, terminated) in enumerate(lines, start=1):
            if not terminated and line == "":
                break  # the end of a file that ends with a line break: no row, as `for line in f`
            if as_json:
                if line.strip():
                    yield _json_record(line, bench, f"{path}:{number}")
                continue
            row = _line_row(line, bench.line_rule)
            if row is not None:
                yield row
    issues.report()
