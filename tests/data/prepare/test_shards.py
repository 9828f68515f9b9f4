"""Shard writer: token stream fidelity, whole-document validation split, determinism, verify."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from armd_scale.cli import main
from armd_scale.data.errors import DataError
from armd_scale.data.loading.loader import ShardLoader
from armd_scale.data.manifest import dtype_for_vocab, read_manifest
from armd_scale.data.permutations import holdout
from armd_scale.data.prepare.shard_writer import ShardSetWriter
from armd_scale.data.prepare.shards import build_shards
from armd_scale.data.prepare.textio import expand_inputs, iter_corpus
from armd_scale.data.prepare.verify import verify_shards
from armd_scale.data.tokenizers.base import Tokenizer
from tests.data.conftest import DOC_GZ, DOCS_JSONL, DOCS_TXT, shard_stream


def document_stream(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    return np.array([t for d in docs for t in tok.encode(d) + [tok.eos_id]], dtype=np.int64)


def test_text_to_shards_to_loader_reproduces_the_token_stream(
    tmp_path: Path, corpus_dir: Path, tokenizer: Tokenizer
) -> None:
    out = str(tmp_path / "set")
    m = build_shards(
        [str(corpus_dir)], out, tokenizer, seq_len=8, samples_per_shard=3, text_field="body", doc_split="paragraph"
    )["train"]
    docs = list(iter_corpus(expand_inputs([str(corpus_dir)]), text_field="body", doc_split="paragraph"))
    assert docs == DOCS_TXT + DOCS_JSONL + [DOC_GZ]  # folder order a.txt, b.jsonl, c.txt.gz; README/.md ignored
    expected = document_stream(tokenizer, docs)
    n = len(expected) // 8
    assert m.totals["samples"] == n and m.totals["dropped_tail_tokens"] == len(expected) - 8 * n
    assert (shard_stream(out + "/train") == expected[: 8 * n]).all()
    # the text comes back: EOS separates documents, newlines and indentation survive
    text = tokenizer.decode(expected[: 8 * n])
    assert text.startswith(DOCS_TXT[0] + DOCS_TXT[1])
    # the loader serves exactly these samples (in its own order) when nothing is dropped
    loader = ShardLoader(
        out + "/train", global_batch_size=1, micro_batch_size=1, rank=0, world_size=1, seed=3, loop=False
    )
    served = np.concatenate([b.numpy() for b in loader])
    chunks = expected[: 8 * n].reshape(n, 8)
    assert sorted(map(tuple, served)) == sorted(map(tuple, chunks))
    assert not (served == chunks).all(), "loader order should be shuffled"


def test_validation_holds_out_whole_documents(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = [f"document number {i} says {'la ' * (i % 5)}" for i in range(40)]
    src = tmp_path / "docs.txt"
    src.write_text("\n\n".join(docs))
    out = str(tmp_path / "set")
    ms = build_shards([str(src)], out, tokenizer, seq_len=4, val_fraction=0.25, seed=5, doc_split="paragraph")
    mask = holdout(40, 0.25, 5)
    assert mask.sum() == 10 and ms["val"].totals["documents"] == 10 and ms["train"].totals["documents"] == 30
    for split, chosen in (("val", mask), ("train", ~mask)):
        expected = document_stream(tokenizer, [d for d, c in zip(docs, chosen, strict=True) if c])
        stream = shard_stream(f"{out}/{split}")
        assert (stream == expected[: len(stream)]).all() and len(expected) - len(stream) < 4


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_builds_are_byte_identical_with_any_worker_count(tmp_path: Path, tokenizer_dir: Path) -> None:
    kw = dict(seq_len=16, val_fraction=0.1, samples_per_shard=50, doc_split="paragraph")
    build_shards(["builtin:pydoc"], str(tmp_path / "a"), str(tokenizer_dir), workers=1, **kw)
    build_shards(["builtin:pydoc"], str(tmp_path / "b"), str(tokenizer_dir), workers=2, **kw)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) > 10 and a == b
    assert not any(".tmp-" in name for name in a), "temporary files left behind"


def test_manifest_records_what_was_built(tmp_path: Path, corpus_dir: Path, tokenizer: Tokenizer) -> None:
    out = tmp_path / "set"
    build_shards(
        [str(corpus_dir / "a.txt")], str(out), tokenizer, seq_len=4, samples_per_shard=5, seed=9, doc_split="line"
    )
    m = read_manifest(str(out / "train"))
    assert m.tokenizer_sha256 == tokenizer.sha256 and m.vocab_size == 256 and m.seq_len == 4 and m.dtype == "uint16"
    assert m.build["seed"] == 9 and m.build["val_fraction"] == 0.0 and m.build["doc_split"] == "line"
    assert [s.samples for s in m.shards[:-1]] == [5] * (len(m.shards) - 1) and 0 < m.shards[-1].samples <= 5
    for entry in m.shards:
        data = (out / "train" / entry.name).read_bytes()
        assert len(data) == entry.bytes and hashlib.sha256(data).hexdigest() == entry.sha256
    assert m.totals["samples"] == m.num_samples and m.totals["tokens"] == 4 * m.num_samples
    assert not (out / "val").exists()


def test_wide_vocabularies_use_uint32(tmp_path: Path) -> None:
    assert dtype_for_vocab(65536) == "uint16" and dtype_for_vocab(65537) == "uint32"
    w = ShardSetWriter(str(tmp_path / "wide"), "train", 3, 100_000, "x" * 64, 2, None)
    rows = np.array([[70_000, 1, 99_999], [5, 65_536, 0], [7, 8, 9]])
    w.add_samples(rows)
    m = w.finish()
    assert m.dtype == "uint32" and (shard_stream(str(tmp_path / "wide")).reshape(3, 3) == rows).all()


def test_existing_set_is_not_overwritten_by_accident(tmp_path: Path, tokenizer: Tokenizer) -> None:
    out = str(tmp_path / "set")
    build_shards(["builtin:pydoc"], out, tokenizer, seq_len=64)
    with pytest.raises(DataError, match="already exists"):
        build_shards(["builtin:pydoc"], out, tokenizer, seq_len=64)
    m = build_shards(["builtin:pydoc"], out, tokenizer, seq_len=32, overwrite=True)["train"]
    assert read_manifest(out + "/train").seq_len == 32 == m.seq_len


def test_bad_inputs_name_the_problem(tmp_path: Path, tokenizer: Tokenizer) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_shards([str(tmp_path / "nope.txt")], str(tmp_path / "o"), tokenizer, seq_len=8)
    one = tmp_path / "one.txt"
    one.write_text("just one document")
    with pytest.raises(DataError, match="at least 2 documents"):
        build_shards([str(one)], str(tmp_path / "o"), tokenizer, seq_len=8, val_fraction=0.5)
    with pytest.raises(DataError, match="tokenizer.json not found"):
        build_shards([str(one)], str(tmp_path / "o"), str(tmp_path), seq_len=8)


def test_verify_names_each_bad_shard(tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "set"
    build_shards(["builtin:pydoc"], str(out), str(tokenizer_dir), seq_len=32, val_fraction=0.1, samples_per_shard=100)
    assert all(r.ok for r in verify_shards(str(out)))
    assert main(["shards", "--verify", str(out), "--no-progress"]) == 0
    train = out / "train"
    (train / "shard-000001.tar").unlink()
    data = (train / "shard-000002.tar").read_bytes()
    (train / "shard-000002.tar").write_bytes(data[:-1000])
    flipped = bytearray((train / "shard-000004.tar").read_bytes())
    flipped[1000] ^= 1
    (train / "shard-000004.tar").write_bytes(bytes(flipped))
    reports = {r.url: r for r in verify_shards(str(out))}
    bad = dict(reports[str(train)].bad)
    assert reports[str(out / "val")].ok
    assert set(bad) == {str(train / f"shard-00000{i}.tar") for i in (1, 2, 4)}
    assert "missing" in bad[str(train / "shard-000001.tar")]
    assert "truncated" in bad[str(train / "shard-000002.tar")]
    assert "checksum" in bad[str(train / "shard-000004.tar")]
    capsys.readouterr()
    assert main(["shards", "--verify", str(out), "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert all(f"BAD {url}" in printed for url in bad)


def test_shards_from_other_tar_writers_still_decode(tmp_path: Path) -> None:
    """The vectorised reader only accepts our exact layout; anything else goes through tarfile."""
    import io
    import tarfile

    from armd_scale.data.errors import BadShardError
    from armd_scale.data.prepare.shard_writer import encode_shard
    from armd_scale.data.shardio import decode_shard

    rows = np.arange(30, dtype=np.uint16).reshape(5, 6)
    ours = encode_shard(rows, 0, "uint16")
    assert (decode_shard(ours, url="u", seq_len=6, dtype="uint16", expected_samples=5) == rows).all()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, row in enumerate(rows):
            info = tarfile.TarInfo(f"sample-{i}.tokens.u16")
            info.size = row.nbytes
            tar.addfile(info, io.BytesIO(row.tobytes()))
    assert (decode_shard(buf.getvalue(), url="u", seq_len=6, dtype="uint16", expected_samples=5) == rows).all()
    with pytest.raises(BadShardError, match="holds 5 samples, the manifest says 4"):
        decode_shard(ours, url="u", seq_len=6, dtype="uint16", expected_samples=4)
    with pytest.raises(BadShardError, match="has 12 bytes, expected 14"):
        decode_shard(ours, url="u", seq_len=7, dtype="uint16", expected_samples=5)


def test_building_streams_with_bounded_memory_and_without_torch(tmp_path: Path, tokenizer_dir: Path) -> None:
    """12 MB of JSON lines (.jsonl.zst) shard in a process that stays far below the data's size and
    never imports torch (webdataset's writer did: +200 MB). The old reader held the whole
    decompressed file, its decoded text and its lines at once."""
    import json
    import subprocess
    import sys

    zstandard = pytest.importorskip("zstandard")
    from armd_scale.data.prepare.corpora import pydoc_documents

    docs = pydoc_documents()
    path = tmp_path / "big.jsonl.zst"
    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as out:
        size, i = 0, 0
        while size < 12 << 20:
            line = (json.dumps({"text": f"{i}: {docs[i % len(docs)]}"}) + "\n").encode()
            out.write(line)
            size, i = size + len(line), i + 1
    if not Path("/proc/self/status").is_file():
        pytest.skip("reads the peak RSS (VmHWM) from /proc, which this system lacks")
    code = (
        "import re, sys\n"
        "from armd_scale.cli import main\n"
        f"rc = main(['shards', '--tokenizer', {str(tokenizer_dir)!r}, '--input', {str(path)!r}, '--seq-len', '256',"
        f" '--shard-size-mb', '1', '--out', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
        # VmHWM, not ru_maxrss: the latter keeps the forked parent's (pytest's) size across exec
        "peak = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "print('torch' in sys.modules, peak // 1024)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    torch_imported, peak_mib = proc.stdout.split()[-2:]
    assert torch_imported == "False"
    assert int(peak_mib) < 120, f"peak RSS {peak_mib} MiB for 12 MB of input"  # old code: 403 MiB
    assert read_manifest(str(tmp_path / "out" / "train")).totals["documents"] == i
