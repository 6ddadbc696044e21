"""The one flatten/unflatten of fishtune, dotted overrides, and union annotations' errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from trainables.config import TrialConfig
from trainables.schema import ConfigError, check, flatten, merge, unflatten


@dataclass(frozen=True, kw_only=True, slots=True)
class Inner:
    size: int = 1


def test_flatten_and_unflatten_are_inverse_on_a_trial_config() -> None:
    cfg = TrialConfig.from_mapping({"model": {"name": "mlp", "hidden": 16}, "train": {"lr": 0.5}})
    flat = flatten(cfg)
    assert flat["train.lr"] == 0.5 and flat["model.options.hidden"] == 16
    assert flatten(unflatten(flat)) == flat
    assert TrialConfig.from_mapping(unflatten(cfg.flat())) == cfg


def test_flatten_descends_into_mappings_and_dataclasses_alike() -> None:
    nested = {"a": {"b": 1, "c": Inner(size=3)}, "search": {"space": {"train.lr": "{}"}}, "empty": {}}
    assert flatten(nested) == {"a.b": 1, "a.c.size": 3, "search.space.train.lr": "{}"}


def test_merge_sets_dotted_names_without_touching_its_input() -> None:
    base = {"search": {"num_samples": 3, "space": {"x": 1}}, "tracking": None, "train": 5}
    merged = merge(base, {"search.num_samples": 9, "tracking.uri": "u", "new.leaf": 1, "train.lr": 0.1})
    assert merged == {
        "search": {"num_samples": 9, "space": {"x": 1}},
        "tracking": {"uri": "u"},
        "train": 5,
        "new": {"leaf": 1},
    }
    assert base["search"] == {"num_samples": 3, "space": {"x": 1}} and base["tracking"] is None


def test_a_union_names_its_alternatives_or_the_nested_key() -> None:
    tp = Literal["none"] | Inner | None
    assert check(tp, "none", "s") == "none" and check(tp, None, "s") is None
    assert check(tp, {"size": 2}, "s") == Inner(size=2)
    assert check(tp, Inner(size=4), "s") == Inner(size=4)  # already parsed
    with pytest.raises(ConfigError, match=r"^s: must be 'none' or a mapping of \['size'\], got 'other'$"):
        check(tp, "other", "s")
    with pytest.raises(ConfigError, match=r"^s\.sise: unknown key"):
        check(tp, {"sise": 2}, "s")
