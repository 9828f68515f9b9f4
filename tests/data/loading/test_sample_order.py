"""SampleOrder: epochs are permutations, ranks' lanes are contiguous stretches of whole chunks, and
windows shuffle inside a lane. Pure order math, no data is read."""

from __future__ import annotations

import numpy as np
import pytest

from armd_scale.data.loading.sample_order import ChunkTable, SampleOrder

SIZES = [64] * 15 + [40]  # 1000 samples, as `indexed_set`
CHUNK = 8


def order(seed: int = 7, gbs: int = 16, window_chunks: int = 4, sizes=SIZES, chunk: int = CHUNK) -> SampleOrder:
    table = ChunkTable.of(sizes, chunk)
    return SampleOrder([table], [table.num_samples], seed=seed, global_batch_size=gbs, window=window_chunks * chunk)


def sample_ids(o: SampleOrder, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Manifest-order sample ids (shard offset + row in shard) of chunk keys and rows."""
    table = o.tables[0]
    shard_start = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    return shard_start[table.shard[keys]] + table.first[keys] + rows


def test_chunk_table_splits_shards_into_chunks_that_end_at_shard_ends() -> None:
    table = ChunkTable.of([20, 5], 8)
    assert table.shard.tolist() == [0, 0, 0, 1]
    assert table.index.tolist() == [0, 1, 2, 0]
    assert table.first.tolist() == [0, 8, 16, 0]
    assert table.size.tolist() == [8, 8, 4, 5]


@pytest.mark.parametrize("epoch", [0, 1])
def test_an_epoch_uses_every_sample_once_except_a_tail_shorter_than_a_batch(epoch: int) -> None:
    o = order()
    keys, rows = o.epoch_matrix(epoch)
    ids = sample_ids(o, keys, rows).ravel()
    assert keys.shape == (1000 // 16, 16)
    assert len(ids) == len(set(ids.tolist())) == 1000 - 1000 % 16 and ids.min() >= 0 and ids.max() < 1000


def test_the_order_depends_on_the_seed_and_the_epoch() -> None:
    a, b, c = order(seed=1), order(seed=1), order(seed=2)
    assert (a.epoch_matrix(0)[0] == b.epoch_matrix(0)[0]).all()
    assert not (a.epoch_matrix(0)[0] == c.epoch_matrix(0)[0]).all()
    assert not (a.epoch_matrix(0)[0] == a.epoch_matrix(1)[0]).all()


@pytest.mark.parametrize("world", [1, 2, 4, 8, 16])
def test_a_rank_reads_whole_chunks_of_one_contiguous_stretch(world: int) -> None:
    """The chunks each rank's places use: together they hold hardly more samples than the rank
    uses (two partial chunks at the ends of its stretch at most), and neighbouring ranks share at
    most the one chunk at their common edge."""
    o = order()
    keys, _ = o.epoch_matrix(0)
    local = 16 // world
    chunk_sets = [set(keys[:, r * local : (r + 1) * local].ravel().tolist()) for r in range(world)]
    used = keys.shape[0] * local
    for chunks in chunk_sets:
        held = int(o.tables[0].size[list(chunks)].sum())
        assert held <= used + 2 * CHUNK
    for r in range(world):
        for q in range(r + 1, world):
            assert len(chunk_sets[r] & chunk_sets[q]) <= (1 if q == r + 1 else 0)


def test_windows_shuffle_a_lane_so_consecutive_steps_rarely_get_consecutive_records() -> None:
    o = order(sizes=[640] * 4, gbs=8)
    keys, rows = o.epoch_matrix(0)
    ids = sample_ids(o, keys, rows)
    following = np.mean(ids[1:] == ids[:-1] + 1)
    assert following < 0.1
    # but a window only mixes nearby samples: a lane stays within a few chunks over a window
    window = o.window
    assert all(len(set(keys[s : s + window, 0].tolist())) <= window // CHUNK + 1 for s in range(0, 300, window))


def test_a_global_batch_draws_from_many_chunks() -> None:
    o = order(sizes=[640] * 8, gbs=32)
    keys, _ = o.epoch_matrix(0)
    distinct = [len(set(step.tolist())) for step in keys]
    assert min(distinct) >= 28  # of 32 places: neighbouring lanes only meet at a shared edge chunk


def test_shared_chunks_are_the_chunks_two_neighbouring_lanes_of_a_rank_both_use() -> None:
    o = order()
    keys, _ = o.epoch_matrix(0)
    both = set()
    for j in (4, 5, 6):
        both |= set(keys[:, j].tolist()) & set(keys[:, j + 1].tolist())
    assert set(o.shared_chunks(0, range(4, 8))) == both and both


def test_window_grids_are_staggered_across_lanes() -> None:
    o = order(sizes=[640] * 4, gbs=8)
    starts = {o.window_bounds(lane, 100)[0] for lane in range(8)}
    assert len(starts) == 8  # reads spread over steps instead of all lanes switching windows together
