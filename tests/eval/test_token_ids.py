"""Token ids >= the vocabulary in shards (as an external converter may write them, with a consistent
manifest and checksums) are named, with the shard, the id and the vocabulary, by the readers:
the training loader (`read_chunk`) and `armd eval ppl`. Before, both failed with a raw IndexError in
the embedding, naming no shard."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from armd_scale.checkpoints.source import open_source
from armd_scale.cli import main
from armd_scale.data.errors import BadShardError
from armd_scale.data.loading.loader import ShardLoader
from armd_scale.data.manifest import read_manifest
from armd_scale.data.prepare.shard_writer import ShardSetWriter

SEQ = 32
VOCAB = 128  # the text run's tokenizer and model
BAD_ID = 200


def _external_set(out: Path, tokenizer_sha256: str) -> Path:
    """Three shards of 8 samples, the second holding id 200 at sample 11; manifest vocab_size 128.
    The shards are written the way `armd shards` lays them out (checksums right), but without its
    id check: what a converter of another tool's format may produce."""
    w = ShardSetWriter(str(out), "val", SEQ, VOCAB, tokenizer_sha256, 8, None)
    rows = np.random.default_rng(0).integers(4, VOCAB, size=(24, SEQ))
    rows[11, 5] = BAD_ID
    for i in range(3):
        w._write_shard(rows[8 * i : 8 * (i + 1)].astype(w.dtype))
    w.finish()
    assert read_manifest(str(out)).vocab_size == VOCAB
    return out


@pytest.fixture()
def bad_set(text_run, tmp_path) -> Path:
    return _external_set(tmp_path / "ext", open_source(text_run.dir).meta["tokenizer_sha256"])


def test_the_training_loader_names_the_shard_the_id_and_the_vocabulary(bad_set):
    loader = ShardLoader(
        str(bad_set), global_batch_size=8, micro_batch_size=8, rank=0, world_size=1, seed=0, loop=False
    )
    with pytest.raises(BadShardError) as e:
        for _ in loader:
            pass
    text = str(e.value)
    assert str(bad_set / "shard-000001.tar") in text
    assert f"token id {BAD_ID}" in text and f"[0, {VOCAB})" in text


def test_eval_ppl_names_the_shard_the_id_and_the_vocabulary(bad_set, text_run, capsys):
    code = main(["eval", "ppl", "--checkpoint", str(text_run.dir), "--data", str(bad_set), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.search(re.escape(f"shard {bad_set / 'shard-000001.tar'}: token id 200 (sample 3)"), err), err
    assert f"[0, {VOCAB})" in err and "Traceback" not in err
