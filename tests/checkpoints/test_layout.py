"""Which model fields a resume must keep: derived from ModelConfig, so fields added later are guarded too."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

import pytest

from armd_scale.checkpoints.layout import NON_FUNCTION_FIELDS, function_differences
from armd_scale.config import ModelConfig


def another_value(tp: Any, value: Any) -> Any:
    """A value of type `tp` different from `value` (validity beyond the type does not matter here)."""
    if get_origin(tp) is Literal:
        return next(v for v in get_args(tp) if v != value)
    options = [t for t in get_args(tp) if t is not type(None)]
    if options:  # Optional[X]
        return another_value(options[0], value) if value is not None else another_value(options[0], 1)
    if tp is bool:
        return not value
    if tp is int:
        return value + 2
    if tp is float:
        return value * 2 + 1
    raise AssertionError(f"no rule for {tp}")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(ModelConfig)])
def test_every_field_but_the_allowed_ones_refuses_a_change(name):
    hints = typing.get_type_hints(ModelConfig)
    saved = dataclasses.asdict(ModelConfig())
    current = {**saved, name: another_value(hints[name], saved[name])}
    diffs = function_differences(saved, current)
    if name in NON_FUNCTION_FIELDS:
        assert diffs == []
    else:
        assert diffs == [f"model.{name}: checkpoint {saved[name]!r} vs config {current[name]!r}"]


def test_rope_theta_and_prefix_agg_are_guarded():
    """Both change the function of the same weights and were accepted on resume before."""
    saved = dataclasses.asdict(ModelConfig())
    diffs = function_differences(saved, {**saved, "rope_theta": 500.0, "prefix_agg": "mean"})
    assert diffs == [
        "model.prefix_agg: checkpoint 'sum' vs config 'mean'",
        "model.rope_theta: checkpoint 10000.0 vs config 500.0",
    ]


def test_a_field_added_later_is_guarded_without_listing_it():
    """A checkpoint written before the field existed has no key for it: it counts as the default (the old
    behaviour), and any other value is refused."""
    extended = dataclasses.make_dataclass("Extended", [("neighbour_window", int, 0)], bases=(ModelConfig,))
    old = dataclasses.asdict(ModelConfig())  # saved before the field existed
    assert function_differences(old, dataclasses.asdict(extended()), extended) == []
    changed = dataclasses.asdict(extended(neighbour_window=4))
    assert function_differences(old, changed, extended) == ["model.neighbour_window: checkpoint 0 vs config 4"]


def test_the_allow_list_names_real_fields():
    assert NON_FUNCTION_FIELDS <= {f.name for f in dataclasses.fields(ModelConfig)}
