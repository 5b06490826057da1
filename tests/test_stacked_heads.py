"""Towers of all tasks as one batched matmul: the same outputs and gradients as per-task heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkit.models import MultiTaskModel
from mtlkit.models.mmoe import MMoE
from mtlkit.models.shared_bottom import SharedBottom
from mtlkit.models.stacked_heads import stackable, stacked_heads
from mtlkit.nn import MLP, TabularEncoder
from mtlkit.tasks import Task


def heads(n: int, hidden: list[int], out: int = 1, **mlp) -> list[tuple[MLP, nn.Linear]]:
    return [(MLP(6, hidden, **mlp), nn.Linear(hidden[-1] if hidden else 6, out)) for _ in range(n)]


@pytest.mark.parametrize("hidden", [[], [5], [5, 3]])
@pytest.mark.parametrize("batch", [1, 7])
def test_stacked_heads_equal_per_task_heads_in_values_and_gradients(hidden, batch):
    torch.manual_seed(0)
    hs = heads(3, hidden)
    xs = [torch.randn(batch, 6, requires_grad=True) for _ in hs]
    params = [p for tower, output in hs for p in (*tower.parameters(), *output.parameters())]
    stacked = stacked_heads(hs, xs)
    separate = [output(tower(x)) for (tower, output), x in zip(hs, xs)]
    cotangents = [torch.randn_like(y) for y in separate]
    got = torch.autograd.grad(stacked, [*xs, *params], cotangents)
    want = torch.autograd.grad(separate, [*xs, *params], cotangents)
    for a, b in zip([*stacked, *got], [*separate, *want]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_one_shared_input_is_broadcast_and_gives_each_head_its_own_gradient():
    torch.manual_seed(1)
    hs = heads(2, [4])
    x = torch.randn(5, 6, requires_grad=True)
    stacked = stacked_heads(hs, [x, x])
    (stacked[0].sum() + 2 * stacked[1].sum()).backward()
    want = torch.autograd.grad(hs[0][1](hs[0][0](x)).sum() + 2 * hs[1][1](hs[1][0](x)).sum(), x)[0]
    torch.testing.assert_close(x.grad, want, atol=1e-5, rtol=0)


def test_only_alike_towers_stack():
    assert stackable(heads(2, [4]))
    assert not stackable(heads(1, [4]))  # one task: nothing to batch
    assert not stackable([*heads(1, [4]), *heads(1, [3])])  # different widths
    assert not stackable([*heads(1, [4]), *heads(1, [4], out=3)])  # binary next to 3 classes
    assert not stackable(heads(2, [4], batch_norm=True))  # BatchNorm: per task
    assert not stackable(heads(2, [4], activation="prelu"))  # a learned activation is per task


def model(backbone: str, tasks: list[Task], **head) -> MultiTaskModel:
    torch.manual_seed(0)
    encoder = TabularEncoder([5, 4], numeric_dim=2, embedding_dim=3)
    names = [t.name for t in tasks]
    bb = MMoE(encoder.output_dim, names, MMoE.Options(experts=3, expert_hidden=[6])) if backbone == "mmoe" else \
        SharedBottom(encoder.output_dim, names, SharedBottom.Options(hidden=[6]))
    return MultiTaskModel(encoder, bb, tasks, tower_hidden=[4], **head)


@pytest.mark.parametrize("backbone", ["mmoe", "shared_bottom"])
def test_model_with_stacked_towers_equals_the_per_task_path(backbone):
    tasks = [Task(name="click", kind="binary"), Task(name="like", kind="binary"), Task(name="watch", kind="regression")]
    m = model(backbone, tasks)
    assert m._stacked
    inputs = {"categorical": torch.tensor([[1, 2], [4, 0], [0, 3]]), "numeric": torch.randn(3, 2)}
    stacked = m(inputs)
    m._stacked = False  # the per-task heads, one after the other
    separate = m(inputs)
    for name in stacked:
        assert stacked[name].shape == separate[name].shape == (3,)
        torch.testing.assert_close(stacked[name], separate[name], atol=1e-6, rtol=0)


def test_models_whose_towers_differ_keep_per_task_heads():
    tasks = [Task(name="click", kind="binary"), Task(name="topic", kind="multiclass", n_classes=3)]
    m = model("mmoe", tasks)
    assert not m._stacked
    out = m({"categorical": torch.tensor([[1, 2]]), "numeric": torch.zeros(1, 2)})
    assert out["click"].shape == (1,) and out["topic"].shape == (1, 3)
    assert not model("mmoe", [Task(name="a", kind="binary"), Task(name="b", kind="binary")], tower_batch_norm=True)._stacked
