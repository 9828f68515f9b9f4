import pytest
import torch

from armd_scale.model.generation_orders import (
    make_order,
    sbp_order,
    shuffled_count,
    validate_order,
)

from .conftest import ORDER_CASES, ORDER_IDS, draw_order


@pytest.mark.parametrize("kind,params,step", ORDER_CASES, ids=ORDER_IDS)
def test_every_kind_is_a_permutation_with_nondecreasing_blocks(kind, params, step):
    order, block = draw_order(kind, params, step, batch=5, n=16)
    assert order.shape == block.shape == (5, 16)
    assert order.dtype == block.dtype == torch.long
    validate_order(order, block)


def test_validate_order_rejects_bad_input():
    order, block = make_order("l2r", 1, 4)
    with pytest.raises(ValueError, match="permutation"):
        validate_order(torch.tensor([[0, 0, 1, 2]]), block)
    with pytest.raises(ValueError, match="non-decreasing"):
        validate_order(order, torch.tensor([[0, 2, 1, 3]]))


def test_l2r_is_identity():
    order, block = make_order("l2r", 2, 6)
    assert torch.equal(order, torch.arange(6).expand(2, 6))
    assert torch.equal(block, torch.arange(6).expand(2, 6))


def test_random_is_seeded_and_varies_across_rows():
    a, _ = make_order("random", 4, 32, generator=torch.Generator().manual_seed(3))
    b, _ = make_order("random", 4, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_sbp_matches_the_design_example():
    order, block = sbp_order(1, 8, streams=2)
    assert order[0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert block[0].tolist() == [0, 1, 2, 2, 3, 3, 4, 4]
    order, block = sbp_order(1, 8, streams=4)
    assert order[0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert block[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


@pytest.mark.parametrize("streams,n", [(1, 8), (2, 16), (4, 16), (8, 64)])
def test_sbp_block_count_is_forward_call_count(streams, n):
    _, block = sbp_order(1, n, streams=streams)
    assert int(block.max()) + 1 == streams + n // streams - 1


def test_sbp_rejects_indivisible_length():
    with pytest.raises(ValueError, match="dividing"):
        sbp_order(1, 10, streams=4)


def test_progressive_schedule_counts():
    kw = dict(ar_steps=100, rho=32, ramp_end=400)
    assert shuffled_count(0, **kw) == 0
    assert shuffled_count(99, **kw) == 0
    assert shuffled_count(100, **kw) == 1
    assert shuffled_count(250, **kw) == 1 + int(0.5 * 31)
    assert shuffled_count(400, **kw) == 32
    assert shuffled_count(10_000, **kw) == 32
    counts = [shuffled_count(s, **kw) for s in range(100, 401)]
    assert counts == sorted(counts)


def test_progressive_is_left_to_right_before_ar_steps():
    order, block = make_order("progressive", 3, 16, step=5, ar_steps=10, rho=8, ramp_end=20)
    assert torch.equal(order, torch.arange(16).expand(3, 16))


@pytest.mark.parametrize("reading", ["scatter", "window"])
def test_progressive_moves_at_most_k_positions(reading):
    gen = torch.Generator().manual_seed(0)
    order, block = make_order(
        "progressive", 64, 32, step=100, ar_steps=0, rho=5, ramp_end=1, reading=reading, generator=gen
    )
    moved = (order != torch.arange(32)).sum(dim=1)
    if reading == "scatter":
        assert int(moved.max()) <= 5
    else:
        # every position stays inside its window of 5
        assert torch.equal(order // 5, torch.arange(32).expand(64, 32) // 5)
    assert int(moved.sum()) > 0
    assert torch.equal(block, torch.arange(32).expand(64, 32))


def test_diffusion_blocks_follow_descending_masking_steps():
    gen = torch.Generator().manual_seed(0)
    order, block = make_order("diffusion", 200, 16, steps=4, generator=gen)
    assert int(block.max()) <= 3
    # on average about N/T tokens per step under the log-linear schedule (uniform steps)
    sizes = torch.stack([(block == b).sum(dim=1) for b in range(4)], dim=1).float()
    assert abs(sizes.mean().item() - 4.0) < 0.5


def test_diffusion_cosine_schedule_and_errors():
    gen = torch.Generator().manual_seed(0)
    order, block = make_order("diffusion", 4, 16, steps=8, schedule="cosine", generator=gen)
    validate_order(order, block)
    with pytest.raises(ValueError, match="schedule"):
        make_order("diffusion", 1, 4, steps=2, schedule="linear")


def test_make_order_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown order kind 'zigzag'"):
        make_order("zigzag", 1, 4)
    with pytest.raises(ValueError, match="needs the optimizer step"):
        make_order("progressive", 1, 4, ar_steps=1, rho=2, ramp_end=3)
    with pytest.raises(ValueError, match="takes no parameters"):
        make_order("l2r", 1, 4, streams=2)
