"""Sparse and skewed tasks: focal loss, negative down-sampling + calibration, negative
re-weighting, log-target regression and YouTube's weighted logistic regression (issue 5)."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mtlkit.config import RunConfig, dump_config, load_config_text
from mtlkit.data.batch import EncodedTable
from mtlkit.data.sampling import downsample_negatives
from mtlkit.data.schema import NumericFeature, SchemaSpec
from mtlkit.errors import ConfigError, DataError
from mtlkit.losses import correct_downsampled, get_loss
from mtlkit.protocols import TrainableModel
from mtlkit.run import LoadedRun, predict_table
from mtlkit.tasks import Task, TaskMask
from mtlkit.train.evaluate import evaluate

# -- helpers --------------------------------------------------------------------------------------


class Linear(TrainableModel):
    """Logistic / linear regression on the numeric inputs: enough for well-specified synthetic data."""

    def __init__(self, name: str, d: int = 1) -> None:
        super().__init__([name])
        self.name = name
        self.linear = torch.nn.Linear(d, 1)

    def forward(self, inputs):
        return {self.name: self.linear(inputs["numeric"]).squeeze(-1)}


SCHEMA = SchemaSpec(numeric=[NumericFeature(name="x", transform="none")])


def fit(task: Task, table: EncodedTable) -> Linear:
    """Full-batch L-BFGS on the task's own loss (weights, masks, options and all)."""
    torch.manual_seed(0)
    model = Linear(task.name)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")
    target, mask, weight = table.targets[task.name], table.masks[task.name], table.weights.get(task.name)

    def closure():
        optimizer.zero_grad()
        loss = task.compute_loss(model(table.inputs)[task.name], target, weight, mask)
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def click_log(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """x ~ N(0, 1), click ~ Bernoulli(σ(−4 + x)): a base rate near 3 %, logistic in x (well specified)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    p = 1 / (1 + np.exp(-(-4.0 + x)))
    return pa.table({"x": x, "click": (rng.random(n) < p).astype(np.int64)}), p


def loaded_run(task: Task, model: torch.nn.Module, fitted) -> LoadedRun:
    config = RunConfig.model_validate({"data": {"train": "unused.csv"}, "features": {"numeric": [{"name": "x", "transform": "none"}]},
                                       "tasks": [task.model_dump(mode="json")]})
    return LoadedRun(config, fitted, [task], model)


# -- focal loss -----------------------------------------------------------------------------------


def test_focal_with_gamma_0_and_no_alpha_is_exactly_bce():
    logits = torch.randn(64) * 5
    target = (torch.rand(64) < 0.3).float()
    assert torch.equal(get_loss("focal")(logits, target, gamma=0.0, alpha=None), get_loss("bce")(logits, target))
    focal = Task(name="t", kind="binary", loss="focal", loss_options={"gamma": 0, "alpha": None})
    assert torch.equal(focal.compute_loss(logits, target), Task(name="t", kind="binary").compute_loss(logits, target))


@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.5, None), (1.0, 0.9)])
def test_focal_is_eq5_of_lin_et_al(gamma, alpha):
    logits = torch.linspace(-4, 4, 17, dtype=torch.float64).repeat(2)
    target = torch.cat([torch.ones(17), torch.zeros(17)]).double()
    p = torch.sigmoid(logits)
    p_t = torch.where(target == 1, p, 1 - p)
    alpha_t = 1.0 if alpha is None else torch.where(target == 1, torch.full_like(target, alpha), torch.full_like(target, 1 - alpha))
    expected = -alpha_t * (1 - p_t) ** gamma * torch.log(p_t)  # FL(p_t) = −α_t (1 − p_t)^γ log p_t
    assert torch.allclose(get_loss("focal")(logits, target, gamma=gamma, alpha=alpha), expected, rtol=1e-10, atol=0)


def test_focal_is_finite_with_finite_gradients_at_extreme_logits():
    logits = torch.tensor([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4] * 2, requires_grad=True)
    target = torch.tensor([0.0] * 7 + [1.0] * 7)
    for gamma in (0.3, 2.0):  # γ < 1 would give 0·∞ through a naive (1 − p_t)^γ
        logits.grad = None
        loss = get_loss("focal")(logits, target, gamma=gamma, alpha=0.25)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    assert loss[13].item() == 0.0 and loss[7].item() > 1e3  # right and confident: 0; wrong: large


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "binary", "loss_options": {"gamma": 2}}, r"loss 'bce' takes no options \(got 'gamma'\)"),
        ({"kind": "binary", "loss": "focal", "loss_options": {"gamma": -1}}, "option 'gamma': Input should be greater than or equal to 0"),
        ({"kind": "binary", "loss": "focal", "loss_options": {"alpha": 1.5}}, "option 'alpha'"),
        ({"kind": "binary", "loss": "focal", "loss_options": {"beta": 1}}, "no option 'beta' \\(it takes: gamma, alpha\\)"),
        ({"kind": "regression", "loss": "huber", "loss_options": {"delta": 0}}, "option 'delta'"),
        ({"kind": "regression", "loss": "focal"}, "does not fit"),
        ({"kind": "regression", "negative_weight": 2.0}, "negative_weight is only for binary"),
        ({"kind": "regression", "negative_sampling_rate": 0.1}, "negative_sampling_rate is only for binary"),
        ({"kind": "regression", "positive_weight_column": "w"}, "positive_weight_column is only for binary"),
        ({"kind": "regression", "output": "odds"}, "odds is only for binary"),
        ({"kind": "binary", "label_transform": "log1p"}, "label_transform is only for regression"),
        ({"kind": "binary", "negative_sampling_rate": 0.0}, "greater than 0"),
        ({"kind": "binary", "negative_sampling_rate": 1.5}, "less than or equal to 1"),
        ({"kind": "binary", "negative_weight": 0.0}, "greater than 0"),
    ],
)
def test_invalid_sparse_task_options(fields, message):
    with pytest.raises(ValidationError, match=message):
        Task(name="t", **fields)


def test_loss_options_error_names_the_config_key():
    text = "data: {train: a.csv}\nfeatures: {numeric: [x]}\ntasks: [{name: share, kind: binary, loss: focal, loss_options: {gama: 2}}]\n"
    with pytest.raises(ConfigError, match=r"run.yaml: key 'tasks.0': loss 'focal' has no option 'gama'"):
        load_config_text(text, "run.yaml")


def test_new_task_fields_survive_a_yaml_round_trip():
    tasks = [
        {"name": "share", "kind": "binary", "loss": "focal", "loss_options": {"gamma": 1.5, "alpha": None},
         "negative_sampling_rate": 0.05, "negative_weight": 0.5, "weight_column": "w"},
        {"name": "click", "kind": "binary", "positive_weight_column": "watch", "output": "odds", "metrics": ["auc"]},
        {"name": "watch", "kind": "regression", "loss": "huber", "label_transform": "log1p", "mask": {"column": "click"}},
    ]
    config = RunConfig.model_validate({"data": {"train": "a.csv"}, "features": {"numeric": ["x"]}, "tasks": tasks})
    again = load_config_text(dump_config(config), "dumped")
    assert again.tasks == config.tasks
    assert again.tasks[0].loss_options == {"gamma": 1.5, "alpha": None}  # null is kept, not reset to 0.25
    assert again.tasks[2].loss_options == {"delta": 1.0}  # defaults are written out
    plain = Task(name="t", kind="binary")
    assert (plain.negative_weight, plain.negative_sampling_rate, plain.positive_weight_column, plain.output,
            plain.label_transform, plain.loss_options) == (1.0, None, None, "probability", "none", {})


# -- negative down-sampling and calibration -------------------------------------------------------


def test_downsample_keeps_every_positive_and_a_rate_of_negatives():
    labels = np.r_[np.ones(500), np.zeros(20000)].astype(np.int64)
    table = pa.table({"y": pa.array(np.r_[labels, [0]], mask=np.r_[np.zeros(len(labels), bool), [True]]),
                      "row": np.arange(len(labels) + 1)})
    sampled = downsample_negatives(table, "y", rate=0.2, seed=7)
    y = sampled.column("y").to_numpy(zero_copy_only=False)
    assert (y == 1).sum() == 500 and np.isnan(y).sum() == 1  # positives and unlabelled rows all stay
    kept = (y == 0).sum()
    assert abs(kept - 0.2 * 20000) < 5 * math.sqrt(20000 * 0.2 * 0.8)  # Bernoulli(0.2) per negative
    assert np.all(np.diff(sampled.column("row").to_numpy()) > 0)  # order kept
    assert sampled.equals(downsample_negatives(table, "y", rate=0.2, seed=7))
    assert not sampled.equals(downsample_negatives(table, "y", rate=0.2, seed=8))
    assert downsample_negatives(table, "y", rate=1.0, seed=0).equals(table)


@pytest.mark.parametrize(
    "table, label, rate, error, message",
    [
        (pa.table({"y": [0, 1]}), "y", 0.0, ConfigError, r"\(0, 1\]"),
        (pa.table({"y": [0, 1]}), "y", 1.5, ConfigError, r"\(0, 1\]"),
        (pa.table({"y": [0, 1]}), "click", 0.5, DataError, "missing label column 'click'"),
        (pa.table({"y": [0, 1, 2]}), "y", 0.5, DataError, "row 3: value 2.0"),
        (pa.table({"y": ["a", "b"]}), "y", 0.5, DataError, "must be numeric"),
    ],
)
def test_downsample_errors(table, label, rate, error, message):
    with pytest.raises(error, match=message):
        downsample_negatives(table, label, rate, seed=0)


def test_correction_formula_direction():
    # Kept negatives at w: odds inflated by 1/w, so q = p·w/(p·w + 1 − p) = p/(p + (1 − p)/w) < p.
    p, w = torch.tensor([0.2, 0.5, 0.9]), 0.1
    q = correct_downsampled(p, w)
    assert torch.allclose(q, p * w / (p * w + 1 - p)) and torch.all(q < p)
    assert torch.allclose(q / (1 - q), w * p / (1 - p))
    task = Task(name="c", kind="binary", negative_sampling_rate=w)
    assert torch.allclose(task.predict(torch.logit(p)), q)
    assert torch.allclose(task.predict_odds(torch.logit(p)), w * p / (1 - p))


@pytest.mark.parametrize("how", ["downsample", "reweight"])
def test_calibration_restores_the_base_rate(how):
    """Fit a logistic regression on negatives thinned (or down-weighted) to 10 %; the corrected
    mean prediction on the untouched data matches the base rate within 10 % (relative), while the
    uncorrected one is more than 3× too high."""
    rate = 0.1
    train, _ = click_log(40_000, seed=1)
    world, p_true = click_log(40_000, seed=2)
    base_rate = float(p_true.mean())
    if how == "downsample":
        train = downsample_negatives(train, "click", rate, seed=3)
        task = Task(name="click", kind="binary", negative_sampling_rate=rate)
    else:
        task = Task(name="click", kind="binary", negative_weight=rate)
    plain = Task(name="click", kind="binary")
    fitted = SCHEMA.fit(train)
    model = fit(task, fitted.encode(train, [task]))
    corrected = predict_table(loaded_run(task, model, fitted), world)["click"]  # the serving path
    uncorrected = predict_table(loaded_run(plain, model, fitted), world)["click"]
    assert abs(corrected.mean() / base_rate - 1) < 0.10, (corrected.mean(), base_rate)
    assert uncorrected.mean() > 3 * base_rate
    # Evaluation scores the corrected probabilities too: calibrated logloss beats the raw one.
    encoded = fitted.encode(world, [task])
    assert evaluate(model, [task], encoded)["click"]["logloss"] < evaluate(model, [plain], encoded)["click"]["logloss"]


# -- negative re-weighting and row weights --------------------------------------------------------


def test_negative_weight_combines_with_sample_weights_and_masks():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0, -3.0])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    weight = torch.tensor([2.0, 3.0, 1.0, 1.0, 4.0])
    mask = torch.tensor([True, True, True, False, True])
    task = Task(name="t", kind="binary", negative_weight=0.25)
    row = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    w = weight * torch.tensor([1.0, 0.25, 0.25, 1.0, 0.25]) * mask
    assert task.compute_loss(logits, target, weight, mask).item() == pytest.approx(((row * w).sum() / w.sum()).item())
    # All rows masked out: still exactly zero.
    assert task.compute_loss(logits, target, weight, torch.zeros(5, dtype=torch.bool)).item() == 0.0


def test_positive_weight_column_is_encoded_with_weight_column_and_mask():
    table = pa.table({"x": [0.0, 1.0, 2.0, 3.0], "click": [1, 0, 1, 0], "watch": [30.0, None, 5.0, None],
                      "w": [2.0, 2.0, 1.0, 3.0], "seen": [1, 1, 1, 0]})
    task = Task(name="click", kind="binary", positive_weight_column="watch", weight_column="w",
                mask=TaskMask(column="seen"), negative_weight=0.5)
    encoded = SCHEMA.fit(table).encode(table, [task])
    assert encoded.weights["click"].tolist() == [60.0, 2.0, 5.0, 3.0]  # w × (watch on positives, 1 on negatives)
    assert encoded.masks["click"].tolist() == [True, True, True, False]
    bad = table.set_column(2, "watch", pa.array([30.0, None, None, None]))
    with pytest.raises(DataError, match=r"column 'watch' \(positive weights of task 'click'\) data row 3"):
        SCHEMA.fit(bad).encode(bad, [task], "log.csv")


# -- watch time: log-target regression ------------------------------------------------------------


def test_log1p_regression_learns_log_seconds_and_serves_seconds():
    watch = torch.tensor([0.0, 9.0, 99.0])
    task = Task(name="watch", kind="regression", label_transform="log1p", loss="huber")
    pred = torch.tensor([0.5, 2.0, 4.0])
    expected = F.huber_loss(pred, torch.log1p(watch), reduction="mean")
    assert task.compute_loss(pred, watch).item() == pytest.approx(expected.item())
    assert torch.allclose(task.predict(torch.log1p(watch)), watch, atol=1e-4)

    class Oracle(torch.nn.Module):  # predicts log1p of the truth exactly
        def forward(self, inputs):
            return {"watch": torch.log1p(inputs["numeric"][:, 0])}

    table = pa.table({"x": [0.0, 9.0, 99.0, 4.0], "watch": [0.0, 9.0, 99.0, 4.0]})
    encoded = SCHEMA.fit(table).encode(table, [task])
    assert encoded.targets["watch"].tolist() == [0.0, 9.0, 99.0, 4.0]  # stored in seconds
    result = evaluate(Oracle(), [task], encoded)["watch"]
    assert result["rmse"] < 1e-4 and result["loss"] < 1e-10  # metrics in seconds, loss in log space
    negative = pa.table({"x": [0.0, 1.0], "watch": [3.0, -1.0]})
    with pytest.raises(DataError, match=r"label column 'watch' of task 'watch', data row 2: value -1.0 \(expected a finite number > -1"):
        SCHEMA.fit(negative).encode(negative, [task], "log.csv")


# -- watch time: YouTube's weighted logistic regression -------------------------------------------


def test_weighted_logistic_regression_odds_estimate_expected_watch_time():
    """Covington et al. 2016 §4.2. Clicks ~ σ(−3 + 0.5x) (P ≈ 5 %), watch | click ~ Exp(mean
    m = e^{3 + 0.5x}), so E[T | x] = p·m and the weighted odds' population limit p·m/(1 − p) is
    log-linear in x (well specified). The odds read-out tracks E[T]: Pearson > 0.95, Spearman
    > 0.99, and its mean is within 15 % of E[T] (it estimates E[T]/(1 − p) ≈ E[T](1 + P), about 9 %
    above E[T] here) and within 8 % of E[T]/(1 − p) (exponential weights are noisy)."""
    rng = np.random.default_rng(4)
    n = 40_000
    x = rng.normal(size=n)
    p = 1 / (1 + np.exp(-(-3.0 + 0.5 * x)))
    mean_watch = np.exp(3.0 + 0.5 * x)
    click = rng.random(n) < p
    watch = np.where(click, rng.exponential(mean_watch), np.nan)
    train = pa.table({"x": x, "click": click.astype(np.int64), "watch": watch})
    task = Task(name="click", kind="binary", positive_weight_column="watch", output="odds", metrics=["auc"])
    fitted = SCHEMA.fit(train)
    model = fit(task, fitted.encode(train, [task]))

    grid = np.linspace(-2.0, 2.0, 201)  # where the data is
    odds = predict_table(loaded_run(task, model, fitted), pa.table({"x": grid}))["click"]
    p_grid = 1 / (1 + np.exp(-(-3.0 + 0.5 * grid)))
    expected_watch = p_grid * np.exp(3.0 + 0.5 * grid)
    assert np.corrcoef(odds, expected_watch)[0, 1] > 0.95
    assert np.corrcoef(np.argsort(np.argsort(odds)), np.argsort(np.argsort(expected_watch)))[0, 1] > 0.99
    held_out = rng.normal(size=100_000)
    odds = task.predict(model({"numeric": torch.tensor(held_out, dtype=torch.float32)[:, None]})["click"]).detach().numpy()
    p_held = 1 / (1 + np.exp(-(-3.0 + 0.5 * held_out)))
    truth = p_held * np.exp(3.0 + 0.5 * held_out)
    assert abs(odds.mean() / truth.mean() - 1) < 0.15, (odds.mean(), truth.mean())
    assert abs(odds.mean() / (truth / (1 - p_held)).mean() - 1) < 0.08
    # Metrics still score a probability (AUC of the click label), never the odds.
    assert 0.5 < evaluate(model, [task], fitted.encode(train, [task]))["click"]["auc"] < 1.0
