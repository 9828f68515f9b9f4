"""The PE table's starting kernels (model/pe_init.py): what each start weights, measured on the Gram
matrix <PE_n, PE_i> over the strictly earlier positions i < n that the prefix sum reads."""

import pytest
import torch

from armd_scale.model import build_model, pe_init
from armd_scale.model.masks import dense_strict

from .conftest import draw_order, tiny_model_config


def previous_and_rest(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every n >= 2: the weight on n - 1 and the largest |weight| on any i < n - 1."""
    gram = table.double() @ table.double().T
    n = table.shape[0]
    previous = torch.stack([gram[m, m - 1] for m in range(2, n)])
    rest = torch.stack([gram[m, : m - 1].abs().max() for m in range(2, n)])
    return previous, rest


def test_shift_start_weights_the_previous_position_far_above_the_rest():
    """N = 128, d_pe = 64 (tiny-cpu, the study): n - 1 weighted 1.0-1.35, every other earlier i at most
    0.34, so at least 3.6x more (the recency start: 1.8x, the next test)."""
    previous, rest = previous_and_rest(pe_init.shift_table(128, 64))
    assert previous.min() >= 1.0 and previous.max() <= 1.35
    assert rest.max() <= 0.34
    assert (previous / rest).min() >= 3.6


def test_recency_start_weights_the_previous_position_only_1_8x_more():
    table = pe_init.recency_table(128, 64, tau=2.0).double()
    gram = table @ table.T
    assert gram[50, 49] == pytest.approx(0.621, abs=1e-3) and gram[50, 48] == pytest.approx(0.350, abs=1e-3)


def test_shift_start_is_exact_when_the_width_covers_the_positions():
    """d_pe >= N: the table is an exact factor of the target, <PE_n, PE_{n-1}> = 1 and 0 elsewhere."""
    previous, rest = previous_and_rest(pe_init.shift_table(32, 32))
    torch.testing.assert_close(previous, torch.ones_like(previous), atol=1e-6, rtol=0)
    assert rest.max() < 1e-6


def test_shift_start_needs_half_as_many_columns_as_positions():
    """At d_pe = N / 4 the rank is too low: the previous position is no longer above the rest."""
    previous, rest = previous_and_rest(pe_init.shift_table(128, 32))
    assert (previous / rest).min() < 1.0


@pytest.mark.parametrize("diagonal", [0.0, 1.0])
def test_diagonal_two_is_the_sharpest_of_the_choices(monkeypatch, diagonal):
    """The free diagonal: 2 (SHIFT_DIAGONAL) gives a larger worst-case ratio than 0 or 1 at N = 128, d = 64."""
    ratio_two = (lambda p, r: (p / r).min())(*previous_and_rest(pe_init.shift_table(128, 64)))
    monkeypatch.setattr(pe_init, "SHIFT_DIAGONAL", diagonal)
    ratio_other = (lambda p, r: (p / r).min())(*previous_and_rest(pe_init.shift_table(128, 64)))
    assert ratio_two > ratio_other + 0.5


def test_the_paper_model_with_the_shift_start_begins_as_the_input_shift():
    """query_input=paper, pe_init=shift, left to right: G0[n] - s is close to X0[n - 1] (the AR model's
    input at n), for random embeddings, at every n >= 1."""
    torch.manual_seed(0)
    cfg = tiny_model_config(query_input="paper", pe_init="shift", max_seq_len=32, d_pe=16)
    model = build_model(cfg)
    order, block = draw_order("l2r", {}, None, batch=1, n=32)
    x = torch.randn(1, 32, cfg.d_model)
    with torch.no_grad():
        g0 = model.prefix_aggregate(x, order, block) - model.start
    cosine = torch.nn.functional.cosine_similarity(g0[0, 1:], x[0, :-1], dim=-1)
    assert cosine.min() > 0.9
    assert dense_strict(block)[0, 0].sum() == 0 and g0[0, 0].abs().max() == 0  # nothing before position 0


def test_shift_table_is_deterministic_and_built_on_the_meta_device_without_work():
    torch.testing.assert_close(pe_init.shift_table(64, 16), pe_init.shift_table(64, 16), atol=0, rtol=0)
    with torch.device("meta"):
        table = pe_init.initial_pos_table(4096, 64, "shift", 2.0)
    assert table.device.type == "meta" and table.shape == (4096, 64)


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="pe_init='sharp'"):
        pe_init.initial_pos_table(8, 4, "sharp", 2.0)
