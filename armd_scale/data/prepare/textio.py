"""Text inputs: which sources an input spec names, and the documents inside them, as streams.

A source is a file URL, a built-in corpus (`builtin:pydoc`) or a `datasets` input (`hf:...`,
see hfdatasets.py). Files are read by format (formats.py decides it from the name, compound
suffixes included) with the streaming readers of readers.py, so no file is read whole.

A document is the unit that is joined with the separator when packing and that is held out whole
for validation, so what counts as one matters: a `.txt` file is one document by default (a book,
an article), `doc_split="paragraph"` or `"line"` cut it finer; each JSON-lines record, Parquet row
or dataset row is one document; each topic of `builtin:pydoc` is one document. The same text gives
the same documents whichever format carried it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from armd_scale.data.errors import DataError
from armd_scale.data.prepare.formats import INPUT_FORMATS, detect_format, found_in_folder
from armd_scale.data.prepare.hfdatasets import HF_PREFIX
from armd_scale.data.prepare.readers import DOC_SPLITS, DocSplit, file_documents
from armd_scale.data.urls import StorageOptions, url_to_fs

__all__ = ["DOC_SPLITS", "DocSplit", "INPUT_FORMATS", "expand_inputs", "iter_corpus", "iter_documents"]

BUILTIN_PREFIX = "builtin:"
SYNTHETIC_PREFIX = "synthetic:"
_GLOB_CHARS = set("*?[")


def _is_stream_source(spec: str) -> bool:
    return spec.startswith((BUILTIN_PREFIX, HF_PREFIX))


def expand_inputs(
    specs: Sequence[str], storage_options: StorageOptions = None, input_format: str = "auto"
) -> list[str]:
    """Files, folders (searched recursively for files whose name states a known format), globs,
    `builtin:` and `hf:` names -> a de-duplicated list of sources, in spec order (folders and globs
    sorted). Every file's format is checked here, so an unreadable name fails before any work."""
    if not specs:
        raise DataError("no input given: pass files, folders, globs, hf:<dataset> or builtin:pydoc")
    out: list[str] = []
    for spec in specs:
        if _is_stream_source(spec):
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
            found = sorted(p for p in fs.find(path) if found_in_folder(p, input_format))
        elif fs.isfile(path):
            found = [path]
        else:
            raise DataError(f"input '{spec}' does not exist")
        if not found:
            raise DataError(
                f"input '{spec}' matches no input file (folders are searched for .txt, .text, .jsonl, .ndjson, "
                ".parquet, .json.gz/.json.zst and their .gz/.zst/.bz2/.xz forms)"
            )
        for p in found:
            detect_format(p, input_format)  # raises, naming the file, if its format is unknown
        out.extend(fs.unstrip_protocol(p) if "://" in spec else p for p in found)
    return list(dict.fromkeys(out))  # without duplicates, first occurrence kept


def iter_documents(
    source: str,
    *,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    storage_options: StorageOptions = None,
    warn: bool = True,
    max_line_bytes: int | None = None,
) -> Iterator[str]:
    """The documents of one source, in order. `warn=False` silences the per-file report of repaired
    lines (for a second pass over the same files). `max_line_bytes` skips longer lines of text and
    JSON-lines files without ever holding them whole (readers.file_documents)."""
    if source.startswith(BUILTIN_PREFIX):
        from armd_scale.data.prepare.corpora import builtin_documents

        yield from builtin_documents(source)
    elif source.startswith(HF_PREFIX):
        from armd_scale.data.prepare.hfdatasets import hf_documents

        yield from hf_documents(source, text_field, warn)
    else:
        fmt = detect_format(source, input_format)
        yield from file_documents(
            source,
            fmt.kind,
            fmt.compression,
            text_field=text_field,
            doc_split=doc_split,
            storage_options=storage_options,
            warn=warn,
            max_line_bytes=max_line_bytes,
        )


def iter_corpus(
    sources: Sequence[str],
    *,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    storage_options: StorageOptions = None,
    warn: bool = True,
) -> Iterator[str]:
    """All documents of all sources, in order: the document order that shards are built in."""
    for source in sources:
        yield from iter_documents(
            source,
            text_field=text_field,
            doc_split=doc_split,
            input_format=input_format,
            storage_options=storage_options,
            warn=warn,
        )


def source_bytes(source: str, storage_options: StorageOptions = None) -> int | None:
    """Stored size of a source (for progress bars); None for built-in corpora and datasets."""
    if _is_stream_source(source):
        return None
    fs, path = url_to_fs(source, storage_options)
    return int(fs.size(path))
