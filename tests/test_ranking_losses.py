"""Pairwise, listwise, JRC, ZILN and OHEM losses; negative_sampling as a data config key."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy import stats

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.config import RunConfig, load_config_text
from mtlkit.data.schema import NumericFeature, SchemaSpec
from mtlkit.errors import ConfigError
from mtlkit.losses.ohem import ohem
from mtlkit.losses.ranking import jrc, listwise, pairwise
from mtlkit.losses.ziln import ziln, ziln_expected_value
from mtlkit.models import ModelSpec, build_model
from mtlkit.run import prepare_data, train_run
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, evaluate, predict_logits
from test_pandas_api import IN_MEMORY

from conftest import click_table

GEN = torch.Generator().manual_seed(0)
S = torch.randn(12, generator=GEN)
Y = torch.tensor([1, 0, 0, 1, 0, 2, 0, 1, 0, 0, 1, 1], dtype=torch.float32)
G = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
W = torch.tensor([1, 1, 2, 1, 1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.float32)   # row 7 does not count


def test_pairwise_is_ranknet_over_the_ordered_pairs_of_each_group():
    num = den = 0.0
    for i in range(12):
        for j in range(12):
            if G[i] == G[j] and Y[i] > Y[j] and W[i] > 0 and W[j] > 0:
                num += float(W[i] * W[j] * F.softplus(-2.0 * (S[i] - S[j])))
                den += float(W[i] * W[j])
    assert float(pairwise(S, Y, W, G, sigma=2.0)) == pytest.approx(num / den, rel=1e-5)
    assert float(pairwise(S, Y, torch.zeros(12), G)) == 0.0   # no counted row: 0, not NaN


def test_listwise_is_the_softmax_cross_entropy_of_each_group():
    losses = []
    for g in G.unique():
        rows = (G == g) & (W > 0)
        gain = Y[rows] * W[rows]
        if gain.sum() > 0:
            losses.append(float(-(gain / gain.sum() * torch.log_softmax(S[rows] / 0.5, 0)).sum()))
    assert float(listwise(S, Y, W, G, temperature=0.5)) == pytest.approx(np.mean(losses), rel=1e-5)


def test_jrc_calibrates_and_ranks_within_groups():
    logits = torch.randn(12, 2, generator=GEN)
    label = (Y > 0).float()
    calib = F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], label, reduction="none")
    assert float(jrc(logits, label, W, G, alpha=1.0)) == pytest.approx(float((calib * W).sum() / W.sum()), rel=1e-5)
    rank = []
    for i in range(12):
        rows = (G == G[i]) & (W > 0)
        k = int(label[i])
        rank.append(float(-(logits[i, k] - torch.logsumexp(logits[rows, k], 0))))
    expected = sum(r * float(w) for r, w in zip(rank, W)) / float(W.sum())
    assert float(jrc(logits, label, W, G, alpha=0.0)) == pytest.approx(expected, rel=1e-5)
    task = Task(name="click", kind="binary", loss="jrc", group_column="request")
    assert task.output_dim == 2
    assert torch.allclose(task.predict(logits), torch.sigmoid(logits[:, 1] - logits[:, 0]))


def test_ziln_is_the_zero_inflated_lognormal_likelihood_and_predicts_the_mean():
    raw = torch.tensor([[0.3, 1.2, 0.1], [-1.0, 0.0, 2.0]])
    y = torch.tensor([4.0, 0.0])
    p, sigma = torch.sigmoid(raw[:, 0]), F.softplus(raw[:, 2])
    nll_pos = -math.log(float(p[0])) - stats.lognorm.logpdf(4.0, s=float(sigma[0]), scale=math.exp(1.2))
    nll_zero = -math.log(1 - float(p[1]))
    assert ziln(raw, y).tolist() == pytest.approx([nll_pos, nll_zero], rel=1e-5)
    mean = stats.lognorm.mean(s=float(sigma[0]), scale=math.exp(1.2)) * float(p[0])
    assert float(ziln_expected_value(raw)[0]) == pytest.approx(mean, rel=1e-5)
    # fitted to data, the read-out is the sample mean (calibrated), not a median
    rng = np.random.default_rng(0)
    values = np.where(rng.random(20_000) < 0.3, rng.lognormal(1.0, 0.8, 20_000), 0.0)
    theta = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=0.05)
    target = torch.tensor(values, dtype=torch.float32)
    for _ in range(600):
        optimizer.zero_grad()
        ziln(theta.expand(len(target), 3), target).mean().backward()
        optimizer.step()
    assert float(ziln_expected_value(theta.detach()[None])[0]) == pytest.approx(values.mean(), rel=0.05)
    with pytest.raises(ValueError, match="label_transform"):
        Task(name="ltv", kind="regression", loss="ziln", label_transform="log1p")
    assert Task(name="ltv", kind="regression", loss="ziln").label_problem(np.array([1.0, -2.0])) is not None


def test_ohem_keeps_the_hardest_rows_only():
    x, y = torch.tensor([3.0, -3.0, 0.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])   # the last row does not count
    row = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert float(ohem(x, y, w, None, keep_ratio=1.0)) == pytest.approx(float(row[:4].mean()), rel=1e-6)
    assert float(ohem(x, y, w, None, keep_ratio=0.5)) == pytest.approx(float(row[[1, 3]].mean()), rel=1e-6)
    task = Task(name="y", kind="regression", loss="ohem", loss_options={"base": "huber", "base_options": {"delta": 0.5}})
    assert task.loss_options["base_options"] == {"delta": 0.5}
    with pytest.raises(ValueError, match="does not fit"):
        Task(name="y", kind="regression", loss="ohem", loss_options={"base": "bce"})


@pytest.mark.parametrize("loss", ["pairwise", "listwise", "jrc"])
def test_a_group_loss_without_group_column_is_a_one_line_config_error_before_anything_is_written(loss, tmp_path):
    with pytest.raises(ValueError, match="group_column"):
        Task(name="click", kind="binary", loss=loss)
    config = {**IN_MEMORY, "data": {"train": "train.csv"}, "tasks": [{"name": "click", "kind": "binary", "loss": loss}]}
    with pytest.raises(ConfigError) as error:
        load_config_text(yaml.safe_dump(config))
    assert "\n" not in str(error.value) and "group_column" in str(error.value) and "tasks" in str(error.value)
    assert not any(tmp_path.iterdir())


def request_table(n_requests: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    request = np.repeat(np.arange(n_requests), 8)
    x = rng.standard_normal((len(request), 2))
    request_bias = rng.normal(0, 2, n_requests)[request]  # clicks vary a lot between requests
    p = 1 / (1 + np.exp(-(2 * x[:, 0] + request_bias - 1)))
    return pa.table({"request": request, "x0": x[:, 0], "x1": x[:, 1], "click": (rng.random(len(p)) < p).astype(int)})


@pytest.mark.parametrize("loss", ["pairwise", "listwise", "jrc"])
def test_group_losses_train_through_the_trainer(loss, tmp_path):
    task = Task(name="click", kind="binary", loss=loss, group_column="request", metrics=["auc", "gauc"])
    schema = SchemaSpec(numeric=[NumericFeature(name="x0"), NumericFeature(name="x1")]).fit(request_table(10, 0))
    train, valid = schema.encode(request_table(300, 0), [task]), schema.encode(request_table(100, 1), [task])
    assert set(train.groups) == {"click"}
    torch.manual_seed(0)
    model = build_model(ModelSpec(options={"hidden": [8]}, tower=[4]), schema, [task])
    trainer = Trainer(model, [task], build_balancer(BalancerSpec(), [task]),
                      TrainSpec(epochs=3, batch_size=80, lr=0.02, progress=False, patience=None), tmp_path)
    trainer.fit(train.batches(80, shuffle=False), valid)   # unshuffled: a batch holds whole requests
    assert evaluate(model, [task], valid)["click"]["gauc"] > 0.75


def test_negative_sampling_is_a_data_key_and_predictions_are_calibrated(tmp_path):
    config = RunConfig.model_validate({**IN_MEMORY, "data": {"negative_sampling": {"label": "click", "rate": 0.3, "seed": 1}},
                                       "train": {**IN_MEMORY["train"], "epochs": 4}})
    train, valid = click_table(3000, 0), click_table(1500, 1)
    prepared = prepare_data(config, {"train": train, "validation": valid})
    assert prepared.validation.num_rows == valid.num_rows   # only the training split is sampled
    kept = prepared.train.column("click").to_numpy()
    assert kept.sum() == train.column("click").to_numpy().sum() and len(kept) < train.num_rows
    assert {t.name: t.negative_sampling_rate for t in prepared.tasks} == {"click": 0.3, "buy": None}
    train_run(config, tmp_path / "run", tables={"train": train, "validation": valid})
    from mtlkit.run import load_run
    run = load_run(tmp_path / "run")
    click = next(t for t in run.tasks if t.name == "click")
    logits = predict_logits(run.model, run.schema.encode(valid, run.tasks, "valid", with_targets=False), 1024)["click"]
    rate = valid.column("click").to_numpy().mean()
    assert abs(float(click.predict(logits).mean()) - rate) < 0.06                  # calibrated back
    assert float(torch.sigmoid(logits).mean()) > rate + 0.1                         # what the sampled data taught
    with pytest.raises(ConfigError, match="negative_sampling.label"):
        prepare_data(RunConfig.model_validate({**IN_MEMORY, "data": {"negative_sampling": {"label": "nope", "rate": 0.3}}}),
                     {"train": train})
    with pytest.raises(ValueError, match="rate"):
        RunConfig.model_validate({**IN_MEMORY, "data": {"negative_sampling": {"label": "click", "rate": 0}}})
