"""The per-layer decoding cache (model/attention.py: KVCache) and the query input's decoding state.

Whole-step correctness is tests/generate/test_cache.py (teacher forcing = full forward); these pin
the pieces' own contracts: where rows are written, what truncate keeps, and that decoding's G0 equals
training's rows when the query sees exactly the committed tokens.
"""

import pytest
import torch

from armd_scale.model.attention import KVCache
from armd_scale.model.query_input import QueryInputCache, cached_query_rows, query_rows

from .conftest import tiny_model


def test_append_writes_in_place_and_truncate_drops_pending_rows():
    cache = KVCache(1, 2, 5, 4, "cpu", torch.float32)
    k, v = cache.append(torch.ones(1, 2, 3, 4), 2 * torch.ones(1, 2, 3, 4))
    assert cache.filled == 3 and k.shape[2] == 3 and k.data_ptr() == cache.k.data_ptr()
    cache.truncate(1)  # rows 1, 2 were pending and are dropped
    k, v = cache.append(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert cache.filled == 2 and k[0, 0, :, 0].tolist() == [1.0, 0.0] and v[0, 0, 0, 0] == 2.0
    with pytest.raises(ValueError, match="only 2 are written"):
        cache.truncate(3)
    with pytest.raises(ValueError, match="cache holds max_len=5"):
        cache.append(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


@pytest.mark.parametrize(
    "config",
    [dict(neighbour_heads=2), dict(prefix_agg="mean", previous_block_input=True), dict(prefix_norm=True)],
)
def test_decoding_state_gives_trainings_rows(config):
    """Queries of the last block see every earlier token: the running state must give the same G0."""
    model = tiny_model("armd", **config).double()
    n, c = 8, 3
    x = torch.randn(1, n, model.cfg.d_model, dtype=torch.float64)
    pos = torch.randperm(n)[None]
    block = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2]])
    with torch.no_grad():
        dense = query_rows(model, x, pos, block, n - c, n)
        state = QueryInputCache(model.cfg, model.neighbour is not None, 1, n, "cpu", torch.float64)
        state.commit(model, x[:, :2], pos[:, :2])
        state.commit(model, x[:, 2:5], pos[:, 2:5])
        cached = cached_query_rows(model, state, pos[:, n - c :])
    torch.testing.assert_close(cached, dense)
