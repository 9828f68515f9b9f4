"""Input formats and streaming readers: suffix detection, per-line decoding, every format gives the
same documents (and byte-identical shards), and bad inputs are errors that name the file."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from armd_scale.data.errors import DataError
from armd_scale.data.prepare import readers
from armd_scale.data.prepare.formats import FileFormat, detect_format
from armd_scale.data.prepare.readers import ReadIssues, iter_text_blocks, split_documents
from armd_scale.data.prepare.shards import build_shards
from armd_scale.data.prepare.textio import expand_inputs, iter_corpus
from armd_scale.data.tokenizers.base import Tokenizer

zstandard = pytest.importorskip("zstandard")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")


def regex_documents(text: str, doc_split: str) -> list[str]:
    """The documented definition (the reader before streaming): regex cut, strip newlines, drop blanks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts = {"file": [text], "paragraph": re.split(r"\n[ \t]*\n", text), "line": text.split("\n")}[doc_split]
    return [p.strip("\n") for p in parts if p.strip("\n").strip()]


def stream_documents(data: bytes, doc_split: str) -> list[str]:
    return list(split_documents(iter_text_blocks(io.BytesIO(data), ReadIssues("mem")), doc_split))


def test_streamed_documents_match_the_definition_across_block_boundaries(monkeypatch) -> None:
    monkeypatch.setattr(readers, "_BLOCK", 3)  # a block boundary every few bytes
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\t", "\n", "\n", "\r\n", "\r", "é"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for doc_split in ("file", "paragraph", "line"):
            assert stream_documents(text.encode(), doc_split) == regex_documents(text, doc_split), (text, doc_split)


def test_invalid_utf8_is_repaired_line_by_line_with_one_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes("naïve café\n".encode() + b"caf\xe9 latin-1\n" + "ok ✓ \xff end\n".encode()[:-7] + b"\xff end\n")
    with caplog.at_level(logging.WARNING):
        docs = list(iter_corpus([str(path)], doc_split="line"))
    # UTF-8 lines stay UTF-8 (a whole-file Latin-1 fallback made "naÃ¯ve cafÃ©" of the first line)
    assert docs == ["naïve café", "café latin-1", "ok ✓ ÿ end"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0]
    assert "2 line(s) were not valid UTF-8 (first: line 2)" in warnings[0]


def test_bom_and_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "crlf.txt.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbfone\r\n\r\ntwo\rthree"))
    assert list(iter_corpus([str(path)], doc_split="paragraph")) == ["one", "two\nthree"]


@pytest.mark.parametrize(
    ("name", "kind", "compression"),
    [
        ("a.txt", "text", None),
        ("dir.v2/a.TXT.GZ", "text", "gzip"),
        ("a.jsonl.zst", "jsonl", "zstd"),
        ("a.jsonl.zstd", "jsonl", "zstd"),
        ("dolma-0001.json.gz", "jsonl", "gzip"),
        ("a.ndjson.bz2", "jsonl", "bz2"),
        ("a.text.xz", "text", "xz"),
        ("lm1b/1b_benchmark.dev.tokens", "text", None),
        ("wikitext-103/wiki.valid.tokens.gz", "text", "gzip"),
        ("part-0.parquet", "parquet", None),
    ],
)
def test_formats_come_from_compound_suffixes(name: str, kind: str, compression: str | None) -> None:
    assert detect_format(name) == FileFormat(kind, compression)


def test_unknown_formats_are_errors_that_name_the_file(tmp_path: Path) -> None:
    for name in ("news.en-00001-of-00100", "shards.tar.gz", "notes.md", "x.parquet.gz"):
        (tmp_path / name).write_text("text\n")
        with pytest.raises(DataError, match=re.escape(str(tmp_path / name))):
            expand_inputs([str(tmp_path / name)])
    lm1b = str(tmp_path / "news.en-00001-of-00100")
    assert list(iter_corpus(expand_inputs([lm1b], input_format="text"), input_format="text")) == ["text"]
    (tmp_path / "sub").mkdir()
    for name in ("a.jsonl.zst", "b.json.gz", "c.parquet", "dataset_info.json", "README", ".hidden.txt"):
        (tmp_path / "sub" / name).write_bytes(b"")
    assert [Path(p).name for p in expand_inputs([str(tmp_path / "sub")])] == ["a.jsonl.zst", "b.json.gz", "c.parquet"]


def _paragraph_docs() -> list[str]:
    """Real prose and code (pydoc topics cut at blank lines) plus non-ASCII text: each document
    has no blank line inside, so a .txt read by paragraph yields exactly these documents."""
    from armd_scale.data.prepare.corpora import pydoc_documents

    docs = [p for d in pydoc_documents()[:40] for p in regex_documents(d, "paragraph")]
    docs += ["naïve café — ünïcødé ✓", "日本語のテキスト\n  second line", "emoji 🙂 and <|endoftext|> literally"]
    return docs


def _write_all_formats(root: Path, docs: list[str]) -> dict[str, list[str]]:
    """The same documents as .txt, .jsonl, .jsonl.gz, multi-frame .jsonl.zst, .json.gz, .ndjson.bz2,
    Parquet (several row groups), and three `hf:` forms. Returns name -> input specs."""
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    (root / "docs.txt").write_text("\n\n".join(docs) + "\n")
    (root / "docs.jsonl").write_bytes(lines)
    (root / "docs.jsonl.gz").write_bytes(gzip.compress(lines))
    half = len(lines) // 2
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    (root / "docs.jsonl.zst").write_bytes(cctx.compress(lines[:half]) + cctx.compress(lines[half:]))
    (root / "docs.json.gz").write_bytes(gzip.compress(lines))
    (root / "docs.ndjson.bz2").write_bytes(bz2.compress(lines))
    table = pa.table({"id": list(range(len(docs))), "text": docs})
    pq.write_table(table, root / "docs.parquet", row_group_size=7)
    folder = root / "hub_layout" / "data"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "train-00000-of-00001.parquet", row_group_size=11)
    specs = {
        "txt": [str(root / "docs.txt")],
        "jsonl": [str(root / "docs.jsonl")],
        "jsonl.gz": [str(root / "docs.jsonl.gz")],
        "jsonl.zst": [str(root / "docs.jsonl.zst")],
        "json.gz": [str(root / "docs.json.gz")],
        "ndjson.bz2": [str(root / "docs.ndjson.bz2")],
        "parquet": [str(root / "docs.parquet")],
    }
    try:
        import datasets
    except ImportError:
        return specs
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(root / "saved"))
    specs["hf:folder"] = [f"hf:{root / 'hub_layout'}"]
    specs["hf:json"] = [f"hf:json?data_files={root / 'docs.jsonl.zst'}"]
    specs["hf:saved"] = [f"hf:{root / 'saved'}@train"]
    return specs


def test_every_format_gives_the_same_documents_and_byte_identical_shards(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = _paragraph_docs()
    specs = _write_all_formats(tmp_path, docs)
    digests = {}
    for name, inputs in specs.items():
        doc_split = "paragraph" if name == "txt" else "file"
        assert list(iter_corpus(expand_inputs(inputs), doc_split=doc_split)) == docs, name
        out = tmp_path / f"shards-{name.replace(':', '-')}"
        build_shards(inputs, str(out), tokenizer, seq_len=32, samples_per_shard=40, doc_split=doc_split)
        digests[name] = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "train").glob("*.tar"))]
    assert len(digests["txt"]) > 3
    assert all(d == digests["txt"] for d in digests.values()), {k: v[:1] for k, v in digests.items()}


def test_corrupt_and_truncated_archives_name_the_file(tmp_path: Path) -> None:
    data = b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(2000))
    good = zstandard.ZstdCompressor().compress(data)
    cases = {
        "truncated.jsonl.zst": (good[: len(good) // 2], "truncated"),
        "garbage.jsonl.zst": (b"this is not zstd at all" * 10, "not a valid zstd stream"),
        "truncated.txt.gz": (gzip.compress(data)[:-20], "corrupt or truncated"),
        "garbage.txt.gz": (b"not gzip" * 20, "corrupt or truncated"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / name))}.*{reason}"):
            list(iter_corpus([str(tmp_path / name)]))


def test_parquet_and_json_errors_name_the_file_and_the_fix(tmp_path: Path, caplog) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "n": [1, 2]}), path)
    with pytest.raises(
        DataError, match=rf"{re.escape(str(path))}.*no column 'text' \(it has: content, n\).*--text-field"
    ):
        list(iter_corpus([str(path)]))
    with pytest.raises(DataError, match="column 'n' has type int64, expected a string"):
        list(iter_corpus([str(path)], text_field="n"))
    (tmp_path / "not.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'not.parquet'))} is not a readable Parquet"):
        list(iter_corpus([str(tmp_path / "not.parquet")]))
    damaged = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"text": [f"doc {i} " * 50 for i in range(4000)]}), damaged, row_group_size=1000)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = b"\xff" * 2000
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{re.escape(str(damaged))}: cannot read rows after row"):
        list(iter_corpus([str(damaged)]))
    array = tmp_path / "array.json"
    array.write_text('[\n  {"text": "a"}\n]\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(array))}:1: not valid JSON.*one JSON document"):
        list(iter_corpus([str(array)]))
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["kept", None, "", "also kept"]}), nulls)
    with caplog.at_level(logging.WARNING):
        assert list(iter_corpus([str(nulls)])) == ["kept", "also kept"]
    assert any(
        str(nulls) in r.getMessage() and "1 record(s) with a null text" in r.getMessage() for r in caplog.records
    )


def test_hf_inputs_without_datasets_name_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(DataError, match=re.escape("pip install 'armd_scale[hf]'")):
        list(iter_corpus(["hf:json?data_files=x.jsonl"]))


def test_hf_inputs_refuse_unknown_keys_and_missing_columns(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="unknown key 'split'"):
        list(iter_corpus(["hf:json?split=train"]))
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no column 'text' \\(it has: body\\)"):
        list(iter_corpus([f"hf:json?data_files={path}"]))
    assert list(iter_corpus([f"hf:json?data_files={path}"], text_field="body")) == ["x"]
    with pytest.raises(DataError, match="split 'test' not found"):
        from datasets import Dataset, DatasetDict

        DatasetDict({"train": Dataset.from_dict({"text": ["a"]})}).save_to_disk(str(tmp_path / "dd"))
        list(iter_corpus([f"hf:{tmp_path / 'dd'}@test"]))


def test_shards_pack_long_documents_in_pieces_without_changing_them(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """A document longer than one encoding chunk is cut at line breaks for the workers; the ids must
    be those of the whole document."""
    from armd_scale.data.prepare import shards

    text = "\n".join(f"line {i} of a very long document" for i in range(20_000))
    (tmp_path / "long.txt").write_text(text)
    out = tmp_path / "long"
    m = build_shards([str(tmp_path / "long.txt")], str(out), tokenizer, seq_len=64, workers=2)["train"]
    assert len(text) > 4 * shards.CHUNK_CHARS and m.totals["documents"] == 1
    expected = np.asarray(tokenizer.encode(text) + [tokenizer.eos_id])
    from tests.data.conftest import shard_stream

    got = shard_stream(str(out / "train"))
    assert len(got) == m.totals["tokens"] and (got == expected[: len(got)]).all()
