import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mtlkit.data.batch import EncodedTable
from mtlkit.tasks import Task, TaskMask
from mtlkit.train.evaluate import evaluate


def test_defaults_by_kind():
    assert Task(name="t", kind="regression").loss == "mse"
    assert Task(name="t", kind="multiclass", n_classes=3).metrics == ["accuracy", "logloss"]
    assert Task(name="t", kind="binary", label="is_click").label == "is_click"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "multiclass"}, "n_classes"),
        ({"kind": "binary", "loss": "mse"}, "does not fit"),
        ({"kind": "binary", "metrics": ["rmse"]}, "does not fit"),
        ({"kind": "binary", "metrics": ["gauc"]}, "group_column"),
        ({"kind": "binary", "loss": "nope"}, "unknown loss"),
        ({"kind": "binary", "colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_task_specs(fields, message):
    with pytest.raises(ValidationError, match=message):
        Task(name="t", **fields)


def test_mask_removes_rows_from_loss():
    task = Task(name="buy", kind="binary", mask=TaskMask(column="click"))
    logits = torch.tensor([0.0, 5.0, -5.0, 3.0])
    target = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask = torch.tensor([True, False, False, True])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], target[mask])
    assert task.compute_loss(logits, target, mask=mask) == pytest.approx(expected.item())
    # Changing a masked-out row changes nothing.
    logits2 = logits.clone()
    logits2[1] = -100.0
    assert task.compute_loss(logits2, target, mask=mask) == pytest.approx(expected.item())


def test_empty_mask_gives_zero_loss_and_zero_gradient():
    task = Task(name="buy", kind="binary")
    logits = torch.randn(5, requires_grad=True)
    loss = task.compute_loss(logits, torch.ones(5), mask=torch.zeros(5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(5))


def test_sample_weights_are_a_weighted_mean():
    task = Task(name="y", kind="regression")
    pred, target = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
    assert task.compute_loss(pred, target, weight=torch.tensor([3.0, 1.0])).item() == pytest.approx((3 * 1 + 1 * 9) / 4)


def test_mask_removes_rows_from_metrics():
    class Fixed(torch.nn.Module):
        def forward(self, inputs):
            return {"buy": inputs["numeric"][:, 0]}

    scores = torch.tensor([[0.9], [0.1], [0.8], [0.2]])
    table = EncodedTable(
        inputs={"numeric": scores},
        targets={"buy": torch.tensor([1.0, 0.0, 0.0, 1.0])},
        masks={"buy": torch.tensor([True, True, False, False])},
    )
    result = evaluate(Fixed(), [Task(name="buy", kind="binary")], table)["buy"]
    assert result["auc"] == 1.0  # with the masked rows the AUC would be 0.5
    assert result["rows"] == 2


@pytest.mark.parametrize(
    "kind, extra, values, bad_row",
    [
        ("binary", {}, [0, 1, 2, 1], 3),
        ("binary", {}, [0, 0.5, 1, 1], 2),
        ("multiclass", {"n_classes": 3}, [0, 2, 3], 3),
        ("multiclass", {"n_classes": 3}, [0, -1, 1], 2),
        ("regression", {}, [0.0, np.inf], 2),
    ],
)
def test_label_problems_name_the_row(kind, extra, values, bad_row):
    problem = Task(name="t", kind=kind, **extra).label_problem(np.array(values, dtype=float))
    assert problem is not None and problem.startswith(f"data row {bad_row}:")


def test_missing_labels_are_allowed():
    assert Task(name="t", kind="binary").label_problem(np.array([0.0, np.nan, 1.0])) is None
