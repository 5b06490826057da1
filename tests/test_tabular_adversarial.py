import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.models import ModelSpec, build_model
from mtlkit.tasks import Task


def _model(device_task: Task):
    schema = SchemaSpec(categorical=[CategoricalFeature(name="user")], numeric=[NumericFeature(name="x")]).fit(
        pa.table({"user": ["a", "b", "c", "a"], "x": [0.1, 0.5, -1.0, 2.0]}))
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [8]}, embedding_dim=4),
                        schema, [Task(name="click", kind="binary"), device_task])
    inputs = schema.encode(pa.table({"user": ["a", "b", "c"], "x": [0.0, 1.0, 2.0]}), [], with_targets=False).inputs
    return model, inputs


def _grads(model, inputs, task: str):
    model.zero_grad()
    out = model(inputs)
    if out[task].dim() == 1:
        torch.nn.functional.binary_cross_entropy_with_logits(out[task], torch.tensor([0.0, 1.0, 1.0])).backward()
    else:
        torch.nn.functional.cross_entropy(out[task], torch.tensor([0, 1, 2])).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_adversarial_task_reverses_its_gradient_into_the_shared_layers_only():
    plain, inputs = _model(Task(name="device", kind="multiclass", n_classes=3))
    adversarial, _ = _model(Task(name="device", kind="multiclass", n_classes=3, grl_lambda=0.5))
    assert torch.equal(plain(inputs)["device"], adversarial(inputs)["device"])  # identity in the forward pass
    g, r = _grads(plain, inputs, "device"), _grads(adversarial, inputs, "device")
    for name in g:
        if name.startswith("heads.device"):
            assert torch.allclose(r[name], g[name])  # the adversary's own tower learns the device as usual
        else:
            assert torch.allclose(r[name], -0.5 * g[name], atol=1e-7), name  # the shared part is pushed to hide it
    assert any(not name.startswith("heads.") and g[name].abs().sum() > 0 for name in g)
    assert _grads(adversarial, inputs, "click").keys() == _grads(plain, inputs, "click").keys()


def test_ganin_schedule_starts_silent_and_grows():
    model, inputs = _model(Task(name="device", kind="multiclass", n_classes=3, grl_lambda=1.0, grl_schedule="ganin"))
    model.set_training_progress(0.0)
    shared = [n for n in _grads(model, inputs, "device") if not n.startswith("heads.")]
    assert all(_grads(model, inputs, "device")[n].abs().sum() == 0 for n in shared)
    model.set_training_progress(0.5)
    assert any(_grads(model, inputs, "device")[n].abs().sum() > 0 for n in shared)


def test_config_errors():
    with pytest.raises(ValidationError, match="grl_lambda .* binary or multiclass"):
        Task(name="w", kind="regression", grl_lambda=1.0)
    with pytest.raises(ValidationError, match="grl_schedule needs grl_lambda"):
        Task(name="d", kind="binary", grl_schedule="ganin")
