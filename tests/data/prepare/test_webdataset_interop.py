"""Our shards are WebDataset shards: the stock `webdataset` library writes the same bytes and reads our sets.

The shard writer and reader deliberately avoid importing webdataset (it imports torch, which would cost
the builder and every loader worker ~200 MB), so this test is what keeps the format interoperable.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from armd_scale.data.manifest import read_manifest
from armd_scale.data.prepare.shard_writer import encode_shard
from armd_scale.data.prepare.shards import build_shards
from armd_scale.data.tokenizers.base import Tokenizer
from tests.data.conftest import shard_stream

wds = pytest.importorskip("webdataset")


@pytest.mark.parametrize(("dtype", "field"), [("uint16", "tokens.u16"), ("uint32", "tokens.u32")])
def test_encode_shard_writes_the_bytes_of_webdatasets_tar_writer(dtype: str, field: str) -> None:
    rows = (np.arange(4 * 7).reshape(4, 7) * 997).astype(dtype)
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0, user="armd", group="armd", mode=0o444) as sink:
        for i, row in enumerate(rows):
            sink.write({"__key__": f"{12 + i:010d}", field: row.tobytes()})
    assert encode_shard(rows, 12, dtype) == buf.getvalue()


def test_webdataset_reads_a_built_shard_set(tmp_path: Path, corpus_dir: Path, tokenizer: Tokenizer) -> None:
    out = tmp_path / "set"
    build_shards([str(corpus_dir)], str(out), tokenizer, seq_len=8, samples_per_shard=3, text_field="body")
    manifest = read_manifest(str(out / "train"))
    urls = sorted(str(p) for p in (out / "train").glob("shard-*.tar"))
    assert len(urls) >= 2  # more than one shard, so the order of shards is exercised too
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == manifest.totals["samples"]
    assert [s["__key__"] for s in samples] == [f"{i:010d}" for i in range(len(samples))]
    read = np.stack([np.frombuffer(s["tokens.u16"], dtype="<u2") for s in samples])
    assert (read.reshape(-1) == shard_stream(str(out / "train"))).all()  # the same tokens our reader serves
