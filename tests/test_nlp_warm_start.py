"""init_from: MT-DNN's second stage starts a single-task run from a multi-task run's weights."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.train.warm_start import checkpoint_state, warm_start


def test_warm_start_copies_matching_names_and_shapes_only():
    source = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "a": torch.nn.Linear(4, 2), "b": torch.nn.Linear(4, 1)})
    target = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "a": torch.nn.Linear(4, 3), "c": torch.nn.Linear(4, 1)})
    before = target["a"].weight.detach().clone()
    report = warm_start(target, source.state_dict())
    assert torch.equal(target["encoder"].weight, source["encoder"].weight)
    assert torch.equal(target["a"].weight, before)  # same name, other shape (3 classes, not 2): left as built
    assert report.loaded == 2
    assert report.skipped == ["a.bias", "a.weight", "b.bias", "b.weight"]
    assert report.fresh == ["a.bias", "a.weight", "c.bias", "c.weight"]


def test_warm_start_refuses_a_checkpoint_with_nothing_in_common(tmp_path):
    with pytest.raises(ConfigError, match="no parameter"):
        warm_start(torch.nn.Linear(2, 2), {"other.weight": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoint_state(tmp_path / "missing_run")
    torch.save({"model": {"weight": torch.ones(2, 2)}}, tmp_path / "best.pt")
    assert torch.equal(checkpoint_state(tmp_path)["weight"], torch.ones(2, 2))  # a run directory reads its best.pt
