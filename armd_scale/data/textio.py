"""Text inputs: which files an input spec names, and the documents inside them.

A document is the unit that is joined with EOS when packing and that is held out whole for
validation, so what counts as one matters: a `.txt` file is one document by default (a book, an
article), `doc_split="paragraph"` or `"line"` cut it finer; each `.jsonl` record is one document;
each topic of `builtin:pydoc` is one document.

Text is decoded as UTF-8, falling back to Latin-1 per file (old corpora mix both), and line endings
are normalised to `\\n` so a CRLF copy of a file tokenizes like the original.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Literal

import fsspec

from armd_scale.data.errors import DataError
from armd_scale.data.urls import StorageOptions, url_to_fs

DocSplit = Literal["file", "paragraph", "line"]
DOC_SPLITS: tuple[str, ...] = ("file", "paragraph", "line")
TEXT_SUFFIXES = (".txt", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
BUILTIN_PREFIX = "builtin:"
SYNTHETIC_PREFIX = "synthetic:"
_GLOB_CHARS = set("*?[")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _strip_gz(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def is_jsonl(source: str) -> bool:
    return _strip_gz(source.lower()).endswith(JSONL_SUFFIXES)


def _is_known_text(source: str) -> bool:
    return _strip_gz(source.lower()).endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)


def expand_inputs(specs: Sequence[str], storage_options: StorageOptions = None) -> list[str]:
    """Files, folders (recursively, keeping only .txt/.text/.jsonl/.ndjson, optionally .gz),
    globs and `builtin:` names -> a sorted, de-duplicated list of sources, in spec order.

    Folders are filtered by extension so that README/LICENSE/*.md files beside a corpus stay out; a file
    named explicitly (or matched by a glob) is read whatever its extension.
    """
    if not specs:
        raise DataError("no input given: pass files, folders, globs or builtin:pydoc")
    out: list[str] = []
    for spec in specs:
        if spec.startswith(BUILTIN_PREFIX):
            out.append(spec)
            continue
        if spec.startswith(SYNTHETIC_PREFIX):
            raise DataError(
                f"input '{spec}' is a synthetic token source, not text: it has no tokenizer to train "
                "and is sharded by `armd shards --input synthetic:markov...` alone"
            )
        fs, path = url_to_fs(spec, storage_options)
        if _GLOB_CHARS & set(path):
            found = sorted(p for p in fs.glob(path) if fs.isfile(p))
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if _is_known_text(p))
        elif fs.isfile(path):
            found = [path]
        else:
            raise DataError(f"input '{spec}' does not exist")
        if not found:
            raise DataError(
                f"input '{spec}' matches no text file (folders are searched for "
                f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} and their .gz)"
            )
        out.extend(fs.unstrip_protocol(p) if "://" in spec else p for p in found)
    return list(dict.fromkeys(out))  # without duplicates, first occurrence kept


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM dropped) or, if that fails, Latin-1; CRLF and CR become LF."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_text(text: str, doc_split: DocSplit) -> Iterator[str]:
    """Cut one file's text into documents; blank documents are dropped."""
    if doc_split == "file":
        parts: Sequence[str] = [text]
    elif doc_split == "paragraph":
        parts = _PARAGRAPH_BREAK.split(text)
    elif doc_split == "line":
        parts = text.split("\n")
    else:
        raise DataError(f"doc_split={doc_split!r} is not one of {', '.join(DOC_SPLITS)}")
    for part in parts:
        part = part.strip("\n")
        if part.strip():
            yield part


def _read(source: str, storage_options: StorageOptions) -> bytes:
    try:
        with fsspec.open(source, "rb", compression="infer", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"input file {source} does not exist") from None
    except (OSError, EOFError) as e:  # truncated or corrupt .gz
        raise DataError(f"cannot read input file {source}: {e}") from None


def _iter_jsonl(source: str, text_field: str, storage_options: StorageOptions) -> Iterator[str]:
    text = decode_text(_read(source, storage_options))
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{source}:{lineno}: record has no field '{text_field}' (it has: {keys}); "
                "choose the field with --text-field"
            )
        value = record[text_field]
        if not isinstance(value, str):
            raise DataError(f"{source}:{lineno}: field '{text_field}' is {type(value).__name__}, expected a string")
        value = value.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
        if value.strip():
            yield value


def iter_documents(
    source: str,
    *,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    storage_options: StorageOptions = None,
) -> Iterator[str]:
    """The documents of one source (a file URL or a `builtin:` name), in file order."""
    if source.startswith(BUILTIN_PREFIX):
        from armd_scale.data.corpora import builtin_documents

        yield from builtin_documents(source)
    elif is_jsonl(source):
        yield from _iter_jsonl(source, text_field, storage_options)
    else:
        yield from split_text(decode_text(_read(source, storage_options)), doc_split)


def iter_corpus(
    sources: Sequence[str],
    *,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    storage_options: StorageOptions = None,
) -> Iterator[str]:
    """All documents of all sources, in order: the document order that shards are built in."""
    for source in sources:
        yield from iter_documents(source, text_field=text_field, doc_split=doc_split, storage_options=storage_options)


def source_bytes(source: str, storage_options: StorageOptions = None) -> int | None:
    """Stored size of a source (for progress bars); None for built-in corpora."""
    if source.startswith(BUILTIN_PREFIX):
        return None
    fs, path = url_to_fs(source, storage_options)
    return int(fs.size(path))
