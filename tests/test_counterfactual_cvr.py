"""ESCM² (IPS, DR) and DCMT: structure, the paper's risks on hand-made numbers, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.errors import ConfigError
from mtlkit.metrics import auc
from mtlkit.models import ModelSpec, build_model
from mtlkit.models.dcmt import dcmt_risk
from mtlkit.models.escm2 import dr_risks, inverse_propensity, ips_risk
from mtlkit.models.relations import TaskRelations
from mtlkit.train import Trainer, TrainSpec, predict_logits
from test_task_relations import FEATURES, FUNNEL, funnel_table

ESCM2_IPS = {"escm2": {"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr", "estimator": "ips"}}
ESCM2_DR = {"escm2": {"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr", "estimator": "dr"}}
DCMT = {"dcmt": {"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr"}}


def model_for(relations, table, backbone="shared_bottom"):
    schema = FEATURES.fit(table)
    torch.manual_seed(0)
    options = {"hidden": [16]} if backbone == "shared_bottom" else {"expert_hidden": [16], "experts": 3}
    return build_model(ModelSpec(backbone=backbone, options=options, tower=[8], relations=relations), schema, FUNNEL), schema


# -- the risks -------------------------------------------------------------------------------------

def test_inverse_propensities_are_clipped_and_carry_no_gradient():
    p = torch.tensor([0.5, 0.01, 1e-9], requires_grad=True)
    w = inverse_propensity(p, clip=15.0)
    assert w.tolist() == pytest.approx([2.0, 15.0, 15.0])
    assert not w.requires_grad


def test_ips_risk_is_unbiased_for_the_entire_space_loss():
    """E_o[(1/|D|) Σ o e/ô] = (1/|D|) Σ e when ô is the true click probability (no clipping)."""
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    logit, converted = torch.randn(n, generator=gen), (torch.rand(n, generator=gen) < 0.3).float()
    propensity = torch.rand(n, generator=gen) * 0.8 + 0.1
    clicked = (torch.rand(n, generator=gen) < propensity).float()
    full = F.binary_cross_entropy_with_logits(logit, converted)
    assert abs(float(ips_risk(logit, converted, clicked, propensity, clip=1e9)) - float(full)) < 0.01
    naive = F.binary_cross_entropy_with_logits(logit[clicked > 0], converted[clicked > 0])
    assert abs(float(naive) - float(full)) < 0.02  # (the naive mean is unbiased here too: o independent of e)


def test_dr_risk_terms():
    logit = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    imputed = torch.tensor([0.0, 1.0, -1.0], requires_grad=True)
    converted, propensity = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, 0.25, 0.5])
    # nothing clicked: the DR risk is the mean imputed error ê = BCE(r̃, r̂), and the imputation risk is 0
    dr, imp = dr_risks(logit, converted, torch.zeros(3), propensity, imputed, clip=15.0)
    expected = F.binary_cross_entropy_with_logits(logit, torch.sigmoid(imputed)).detach()
    assert float(dr.detach()) == pytest.approx(float(expected), rel=1e-6) and float(imp.detach()) == 0.0
    # every row clicked with ô = 1: DR = the plain entire-space loss, whatever the imputation
    dr, imp = dr_risks(logit, converted, torch.ones(3), torch.ones(3), imputed, clip=15.0)
    assert float(dr.detach()) == pytest.approx(float(F.binary_cross_entropy_with_logits(logit, converted).detach()), rel=1e-6)
    # gradients: the DR risk trains the CVR logits only, the imputation risk the imputation only
    clicked = torch.tensor([1.0, 0.0, 1.0])
    dr, imp = dr_risks(logit, converted, clicked, propensity, imputed, clip=15.0)
    assert torch.autograd.grad(dr, imputed, retain_graph=True, allow_unused=True)[0] is None
    assert torch.autograd.grad(imp, logit, retain_graph=True, allow_unused=True)[0] is None
    grad = torch.autograd.grad(dr, logit)[0]
    assert grad[1] != 0  # an unclicked row trains the CVR tower through ê
    e = F.binary_cross_entropy_with_logits(logit, converted, reduction="none").detach()
    e_hat = F.binary_cross_entropy_with_logits(logit.detach(), torch.sigmoid(imputed.detach()), reduction="none")
    w = torch.tensor([2.0, 4.0, 2.0])
    assert float(imp.detach()) == pytest.approx(float((clicked * (e - e_hat) ** 2 * w).mean()), rel=1e-6)


def test_dcmt_risk_terms():
    f, c = torch.tensor([0.5, -0.5, 1.0]), torch.tensor([0.0, 0.2, -3.0])
    converted, clicked, p = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.5, 0.2, 0.2])
    got = dcmt_risk(f, c, converted, clicked, p, constraint=0.5, clip=15.0)
    factual = F.binary_cross_entropy_with_logits(f, converted, reduction="none")
    counter = F.binary_cross_entropy_with_logits(c, torch.ones(3), reduction="none")
    gap = (1 - torch.sigmoid(f) - torch.sigmoid(c)).abs()
    expected = (factual[0] / 0.5 + factual[1] / 0.2 + counter[2] / 0.8 + 0.5 * gap.sum()) / 3
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


# -- structure -------------------------------------------------------------------------------------

@pytest.mark.parametrize("relations", [ESCM2_IPS, ESCM2_DR, DCMT], ids=["ips", "dr", "dcmt"])
@pytest.mark.parametrize("batch", [1, 6])
def test_structure_ctcvr_is_a_product_and_cvr_is_trained(relations, batch):
    table = funnel_table(40, 0)
    model, schema = model_for(relations, table)
    assert "ctcvr" not in model.heads and model.loss_task_names == ["ctr", "cvr", "ctcvr"]
    has_second = "estimator" not in next(iter(relations.values())) or relations.get("escm2", {}).get("estimator") == "dr"
    assert ("counterfactual" in model.auxiliary) == has_second  # DR's imputation tower, DCMT's counterfactual tower
    first_click = int(np.flatnonzero(table.column("click").to_numpy())[0])  # IPS learns from clicked rows only
    encoded = schema.encode(table.slice(first_click, batch), FUNNEL)
    out = model(encoded.inputs)
    assert torch.allclose(torch.sigmoid(out["ctcvr"]), torch.sigmoid(out["ctr"]) * torch.sigmoid(out["cvr"]), atol=1e-6)
    losses = model.relation_losses(out, encoded.targets, encoded.masks)
    assert set(losses) == {"cvr"} and torch.isfinite(losses["cvr"])
    losses["cvr"].backward()
    ctr_head = [p.grad for p in model.heads["ctr"].parameters()]
    assert all(g is None or not g.any() for g in ctr_head)  # the propensity is held constant
    assert any(p.grad is not None and p.grad.any() for p in model.heads["cvr"].parameters())


def test_bad_relations_are_config_errors():
    table = funnel_table(20, 0)
    with pytest.raises(ValueError, match="escm2 and dcmt"):
        TaskRelations(**ESCM2_IPS, **DCMT).check(FUNNEL)
    with pytest.raises(ValueError, match="estimator"):
        ModelSpec(relations={"escm2": {"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr", "estimator": "snips"}})
    with pytest.raises(ConfigError, match="escm2.cvr"):
        model_for({"escm2": {"ctr": "ctr", "cvr": "nope", "ctcvr": "ctcvr"}}, table)


# -- training -------------------------------------------------------------------------------------

@pytest.mark.parametrize("relations", [ESCM2_IPS, ESCM2_DR, DCMT], ids=["ips", "dr", "dcmt"])
def test_trains_and_learns_cvr_over_the_entire_space(relations, tmp_path):
    train_table, test_table = funnel_table(3000, 0), funnel_table(2000, 1)
    model, schema = model_for(relations, train_table)
    train, valid = schema.encode(train_table, FUNNEL), schema.encode(funnel_table(800, 2), FUNNEL)
    trained = [t for t in FUNNEL if t.name in model.loss_task_names]
    trainer = Trainer(model, FUNNEL, build_balancer(BalancerSpec(), trained),
                      TrainSpec(epochs=4, batch_size=128, lr=0.01, progress=False, patience=None), tmp_path)
    result = trainer.fit(train.batches(128, shuffle=True, seed=0), valid)
    assert all(np.isfinite(r["train/cvr/loss"]) for r in result.history)
    logits = predict_logits(model.eval(), schema.encode(test_table, FUNNEL, with_targets=False), 1024)
    p_cvr = torch.sigmoid(logits["cvr"]).numpy()
    truth = test_table.column("p_buy").to_numpy()
    assert np.corrcoef(p_cvr, truth)[0, 1] > 0.5   # CVR ranks every impression, clicked or not
    sampled = np.random.default_rng(0).random(truth.shape[0]) < truth
    assert auc(p_cvr, sampled) > 0.65


def test_the_generators_selection_bias_changes_conversion_outside_the_clicked_space_only():
    from mtlkit.data.datasets.shortvideo import shortvideo_table

    plain, default = shortvideo_table(30_000, seed=0, selection_bias=0.0), shortvideo_table(30_000, seed=0)
    assert plain.equals(default)  # off by default: the original generator, row for row
    biased = shortvideo_table(30_000, seed=0, selection_bias=3.0)
    click = biased.column("click").to_numpy() > 0
    like_rate = biased.column("like").to_numpy().mean()
    assert abs(like_rate - 0.01) < 0.003  # the like intercept is re-solved
    relevance = biased.column("true_relevance").to_numpy()
    p_plain, p_biased = plain.column("true_like_prob").to_numpy(), biased.column("true_like_prob").to_numpy()
    low = relevance < np.quantile(relevance, 0.2)  # where clicks are rare
    assert click[low].mean() < 0.5 * click.mean()
    assert p_biased[low].mean() > 1.5 * p_plain[low].mean()   # conversion rises where relevance is low
    assert np.corrcoef(p_plain, relevance)[0, 1] > 0.4 > np.corrcoef(p_biased, relevance)[0, 1]
    with pytest.raises(ConfigError, match="selection_bias"):
        shortvideo_table(1000, seed=0, selection_bias=-1.0)
