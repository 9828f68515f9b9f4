"""Evaluation windows: batching keeps every window, in order, across sources and shard boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from armd_scale.data.prepare.shard_writer import ShardSetWriter
from armd_scale.data.tokenizers.ids import IdTokenizer
from armd_scale.eval.windows import open_eval_data


def _shard_set(url: str, rows: np.ndarray, per_shard: int) -> str:
    writer = ShardSetWriter(url, "val", rows.shape[1], 200, "sha-x", per_shard, None)
    writer.add_samples(rows)
    writer.finish()
    return url


@pytest.mark.parametrize("batch_size", [1, 3, 5, 12, 20])
def test_batches_cover_every_window_in_order(tmp_path, batch_size):
    a = np.arange(7 * 4).reshape(7, 4) % 200
    b = (np.arange(5 * 4).reshape(5, 4) + 100) % 200
    urls = [_shard_set(str(tmp_path / "a"), a, 3), _shard_set(str(tmp_path / "b"), b, 2)]
    data = open_eval_data(urls, IdTokenizer.of(200, "sha-x"), seq_len=4)
    batches = list(data.batches(batch_size))
    assert all(len(x) == batch_size for x in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
    assert np.array_equal(np.concatenate(batches), np.concatenate([a, b]))
    assert data.num_windows == 12 and data.num_tokens == 48


def test_max_tokens_takes_a_prefix_of_whole_windows(tmp_path):
    a = np.arange(7 * 4).reshape(7, 4)
    url = _shard_set(str(tmp_path / "a"), a, 3)
    data = open_eval_data([url, url], IdTokenizer.of(200, "sha-x"), seq_len=4, max_tokens=4 * 4 + 3)
    assert np.array_equal(np.concatenate(list(data.batches(3))), a[:4])
    assert [s["windows"] for s in data.sources] == [4]
