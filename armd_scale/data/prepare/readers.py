"""Documents out of one input file, read as a stream: text, JSON lines and Parquet.

Decoding. Text is UTF-8. A line that is not valid UTF-8 is decoded with its invalid bytes read as
Latin-1 characters (`caf\\xe9` -> `café`; the valid UTF-8 around them is kept), and the file's count
of such lines is reported in one warning naming the file and the first such line. Whole-file
fallbacks are wrong both ways: one stray byte would turn a UTF-8 file into mojibake, and a
Latin-1 file would fail. A UTF-8 BOM at the start is dropped; CRLF and CR become LF.

Memory. Files are read in blocks of about 1 MiB that end at a line break, so memory is bounded by
the largest document plus one block, never by the file. (With `doc_split="file"` a text file is one
document and is therefore held whole; cut it with `paragraph` or `line` for huge files.) A single
line is held whole too, unless the caller bounds it (`max_line_bytes`, tokenizer training): a longer
line is then read in bounded pieces and skipped, counted in the file's warning.

What a document is: a `.txt` file is one document by default, `doc_split="paragraph"` cuts it at
blank lines and `"line"` at every line; a JSON-lines record or a Parquet row is one document (its
`text_field`). Blank documents are dropped everywhere, so the same text gives the same documents
whichever format carried it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from armd_scale.data.errors import DataError
from armd_scale.data.prepare.formats import open_stream
from armd_scale.data.urls import StorageOptions

log = logging.getLogger(__name__)

DocSplit = Literal["file", "paragraph", "line"]
DOC_SPLITS: tuple[str, ...] = ("file", "paragraph", "line")
_BLOCK = 1 << 20
_PARQUET_BATCH = 1024
_BLANK = " \t"


@dataclass
class ReadIssues:
    """What a file's reader repaired or skipped, reported once per file."""

    source: str
    invalid_utf8_lines: int = 0
    first_invalid_line: int | None = None
    null_records: int = 0
    long_lines: int = 0
    first_long_line: int | None = None
    max_line_bytes: int | None = None  # longer lines are skipped (iter_text_blocks)

    def report(self) -> None:
        if self.invalid_utf8_lines:
            log.warning(
                "%s: %d line(s) were not valid UTF-8 (first: line %d); their invalid bytes were read as Latin-1",
                self.source,
                self.invalid_utf8_lines,
                self.first_invalid_line,
            )
        if self.long_lines:
            log.warning(
                "%s: %d line(s) longer than %d bytes were skipped (first: line %d)",
                self.source,
                self.long_lines,
                self.max_line_bytes,
                self.first_long_line,
            )
        if self.null_records:
            log.warning("%s: %d record(s) with a null text were skipped", self.source, self.null_records)


def _decode_lines(block: bytes, first_line: int, issues: ReadIssues) -> str:
    """UTF-8 text of a block of whole lines; lines with invalid bytes are repaired one by one."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = block.split(b"\n")
    for i, raw in enumerate(lines):
        try:
            lines[i] = raw.decode("utf-8")  # type: ignore[call-overload]
        except UnicodeDecodeError:
            out, pos = [], 0
            while True:  # keep valid UTF-8, read each invalid byte run as Latin-1
                try:
                    out.append(raw[pos:].decode("utf-8"))
                    break
                except UnicodeDecodeError as e:
                    out.append(raw[pos : pos + e.start].decode("utf-8"))
                    out.append(raw[pos + e.start : pos + e.end].decode("latin-1"))
                    pos += e.end
            lines[i] = "".join(out)  # type: ignore[call-overload]
            issues.invalid_utf8_lines += 1
            if issues.first_invalid_line is None:
                issues.first_invalid_line = first_line + i
    return "\n".join(lines)  # type: ignore[arg-type]


def _skip_long_lines(block: bytes, first_line: int, issues: ReadIssues) -> bytes:
    """`block` with every line longer than issues.max_line_bytes emptied (its line break kept)."""
    limit = issues.max_line_bytes
    assert limit is not None
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        if len(line) > limit:
            lines[i] = b""
            issues.long_lines += 1
            if issues.first_long_line is None:
                issues.first_long_line = first_line + i
    return b"\n".join(lines)


def _rest_of_line(stream: BinaryIO, limit: int | None) -> bytes:
    """The rest of the current line, its line break included; with a `limit`, a rest longer than
    that is read in bounded pieces and dropped, only its first `limit` + 1 bytes (enough to be seen
    as over-long) and its line break are returned, so memory never holds the whole line."""
    if limit is None:
        return stream.readline()
    rest = stream.readline(limit + 1)
    if len(rest) <= limit or rest.endswith(b"\n"):
        return rest
    while piece := stream.readline(_BLOCK):
        if piece.endswith(b"\n"):
            return rest + b"\n"
    return rest


def iter_text_blocks(stream: BinaryIO, issues: ReadIssues) -> Iterator[str]:
    """Decoded text in blocks that end with a line break (the last one may not); line endings LF.
    With `issues.max_line_bytes`, longer lines are read as empty lines, counted in `issues`."""
    line_no = 1
    first = True
    limit = issues.max_line_bytes
    while True:
        block = stream.read(_BLOCK)
        if not block:
            return
        if not block.endswith(b"\n"):
            block += _rest_of_line(stream, limit)  # complete the last line, so a block never splits one
        if limit is not None and len(block) > limit:
            block = _skip_long_lines(block, line_no, issues)
        if first:
            if block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            first = False
        text = _decode_lines(block, line_no, issues)
        line_no += block.count(b"\n")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        yield text


def iter_lines(blocks: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """(line, whether a line break follows it) for the text of `blocks`, as `text.split("\\n")` would
    cut it: a text ending with a line break ends with an empty, unterminated line."""
    carry = ""
    for block in blocks:
        parts = block.split("\n")
        parts[0] = carry + parts[0]
        for part in parts[:-1]:
            yield part, True
        carry = parts[-1]
    yield carry, False


def _document(lines: list[str]) -> str | None:
    text = "\n".join(lines).strip("\n")
    return text if text.strip() else None


def split_documents(blocks: Iterator[str], doc_split: DocSplit) -> Iterator[str]:
    """Documents of one text file. `paragraph` cuts where the text has a newline, spaces or tabs
    only, then a newline (regex `\\n[ \\t]*\\n`, matched left to right, so a blank line right after a
    cut belongs to the next paragraph); documents are stripped of outer newlines; blank ones are
    dropped."""
    if doc_split not in DOC_SPLITS:
        raise DataError(f"doc_split={doc_split!r} is not one of {', '.join(DOC_SPLITS)}")
    if doc_split == "file":
        doc = _document(["".join(blocks)])
        if doc is not None:
            yield doc
        return
    if doc_split == "line":
        for line, _ in iter_lines(blocks):
            if line.strip():
                yield line
        return
    current: list[str] = []
    previous_was_cut = True  # the first line has no newline before it, so it cannot be a cut
    for line, terminated in iter_lines(blocks):
        is_cut = terminated and not previous_was_cut and not line.strip(_BLANK)
        if is_cut:
            doc = _document(current)
            if doc is not None:
                yield doc
            current = []
        else:
            current.append(line)
        previous_was_cut = is_cut
    doc = _document(current)
    if doc is not None:
        yield doc


def record_text(value: object, where: str, text_field: str, issues: ReadIssues) -> str | None:
    """A record's text, newline-normalised, or None to skip it (blank or null)."""
    if value is None:
        issues.null_records += 1
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{text_field}' is {type(value).__name__}, expected a string")
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = value.strip("\n")
    return value if value.strip() else None


def jsonl_documents(blocks: Iterator[str], source: str, text_field: str, issues: ReadIssues) -> Iterator[str]:
    """One document per JSON record (`text_field` of each object), in file order."""
    lineno = 0
    for line, _ in iter_lines(blocks):
        lineno += 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (the file holds one JSON document, not JSON lines)" if line.strip() in ("[", "{") else ""
            raise DataError(f"{source}:{lineno}: not valid JSON ({e.msg}){hint}") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{source}:{lineno}: record has no field '{text_field}' (it has: {keys}); "
                "choose the field with --text-field"
            )
        text = record_text(record[text_field], f"{source}:{lineno}", text_field, issues)
        if text is not None:
            yield text


def parquet_documents(
    source: str, text_field: str, issues: ReadIssues, storage_options: StorageOptions
) -> Iterator[str]:
    """One document per row (`text_field`), read a batch of rows at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{source} is Parquet: install pyarrow (pip install 'armd_scale[parquet]')") from None
    with open_stream(source, None, storage_options) as stream:
        try:
            pf = pq.ParquetFile(stream)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"input file {source} is not a readable Parquet file: {e}") from None
        schema = pf.schema_arrow
        if text_field not in schema.names:
            raise DataError(
                f"{source}: Parquet file has no column '{text_field}' (it has: {', '.join(schema.names)}); "
                "choose the column with --text-field"
            )
        kind = schema.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(f"{source}: column '{text_field}' has type {kind}, expected a string column")
        row = 0
        batches = pf.iter_batches(batch_size=_PARQUET_BATCH, columns=[text_field])
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as e:  # a damaged row group
                raise DataError(f"input file {source}: cannot read rows after row {row}: {e}") from None
            if batch is None:
                return
            for value in batch.column(0).to_pylist():
                row += 1
                text = record_text(value, f"{source}: row {row}", text_field, issues)
                if text is not None:
                    yield text


def file_documents(
    source: str,
    kind: str,
    compression: str | None,
    *,
    text_field: str,
    doc_split: DocSplit,
    storage_options: StorageOptions,
    warn: bool = True,
    max_line_bytes: int | None = None,
) -> Iterator[str]:
    """The documents of one file of a known format (formats.detect_format), streamed. Lines of text
    and JSON-lines files longer than `max_line_bytes` are skipped (counted in one warning), and no
    more than that of such a line is ever held (tokenizer training: SentencePiece drops them anyway)."""
    issues = ReadIssues(source, max_line_bytes=max_line_bytes)
    if kind == "parquet":
        yield from parquet_documents(source, text_field, issues, storage_options)
    else:
        with open_stream(source, compression, storage_options) as stream:
            blocks = iter_text_blocks(stream, issues)
            if kind == "jsonl":
                yield from jsonl_documents(blocks, source, text_field, issues)
            else:
                yield from split_documents(blocks, doc_split)
    if warn:
        issues.report()
