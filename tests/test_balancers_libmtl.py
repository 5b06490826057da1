"""The LibMTL 1.1.5 methods (MoCo, FairGrad, STCH, ExcessMTL, MoDo, SDMGrad) against their update rules.

The property tests every balancer passes are in test_balancers.py; here each method's equation is
checked on small hand-made Jacobians, against a transcription of LibMTL's loop where mtlkit
implements the method itself.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlkit.balancing import BALANCERS
from mtlkit.balancing.moco import project_simplex


def build(name, tasks, **options):
    cls = BALANCERS.get(name)
    return cls(list(tasks), cls.Options(**options))


def test_simplex_projection_matches_the_sort_algorithm_and_ignores_absent_tasks():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = torch.randn(5, generator=gen, dtype=torch.float64) * 3
        present = torch.rand(5, generator=gen) > 0.3
        w = project_simplex(v, present)
        if present.any():
            assert abs(float(w.sum()) - 1) < 1e-12 and (w >= 0).all() and not w[~present].any()
            # optimality (KKT): w = max(v − θ, 0) on the present entries for one θ
            theta = (v[present] - w[present])[w[present] > 0]
            assert torch.allclose(theta, theta[0].expand_as(theta))
        else:
            assert not w.any()


def libmtl_moco(grads_seq, losses_seq, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0):
    """LibMTL 1.1.5's MoCo.backward, transcribed (softmax weight update)."""
    t, n = grads_seq[0].shape
    y, lambd, out = torch.zeros(t, n, dtype=torch.float64), torch.ones(t, dtype=torch.float64) / t, []
    for step, (grads, losses) in enumerate(zip(grads_seq, losses_seq), start=1):
        grads = grads / (grads.norm(dim=1, keepdim=True) + 1e-8) * losses[:, None]
        y = y - (beta / step ** beta_sigma) * (y - grads)
        lambd = torch.softmax(lambd - (gamma / step ** gamma_sigma) * (y @ y.T + rho * torch.eye(t, dtype=torch.float64)) @ lambd, -1)
        out.append(y.T @ lambd)
    return out


def test_moco_softmax_variant_equals_libmtls_loop():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, 7, generator=gen, dtype=torch.float64) for _ in range(6)]
    losses = [torch.rand(3, generator=gen, dtype=torch.float64) + 0.1 for _ in range(6)]
    b = build("moco", "abc", weight_update="softmax")
    for g, loss, expected in zip(grads, losses, libmtl_moco(grads, losses)):
        b.step_objectives = loss
        d = b.aggregate(g, torch.ones(3, dtype=torch.bool))
        assert torch.allclose(d, expected, atol=1e-10)


def test_moco_tracks_gradients_across_steps():
    b = build("moco", "ab", normalize=False, beta=0.5, beta_sigma=0.0)
    present = torch.ones(2, dtype=torch.bool)
    b.aggregate(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), present)
    b.aggregate(torch.tensor([[0.0, 0.0], [0.0, 2.0]]) + 1e-12, present)
    assert torch.allclose(b.tracked[0], torch.tensor([0.5, 0.0]), atol=1e-6)  # y ← y − ½(y − h): 1 → ½


def test_fairgrad_solves_the_alpha_fair_condition():
    gen = torch.Generator().manual_seed(2)
    for alpha in (0.5, 1.0, 2.0):
        b = build("fairgrad", "abc", alpha=alpha)
        jacobian = torch.randn(3, 10, generator=gen, dtype=torch.float64)
        gram = jacobian @ jacobian.T
        w = b.weights(gram, torch.ones(3, dtype=torch.bool))
        assert torch.allclose(gram @ w, w ** (-1.0 / alpha), rtol=1e-3), alpha   # Eq. 4


def libmtl_excess(grads_seq, step_size):
    """LibMTL 1.1.5's ExcessMTL loss weights, transcribed."""
    weights, grad_sum, initial, out = torch.ones(grads_seq[0].shape[0], dtype=torch.float64), None, None, []
    for grads in grads_seq:
        grad_sum = grads ** 2 if grad_sum is None else grad_sum + grads ** 2
        w = (grads ** 2 / torch.sqrt(grad_sum + 1e-7)).sum(1)
        if initial is None:
            initial = w
        else:
            weights = weights * torch.exp(w / initial * step_size)
            weights = weights / weights.sum() * len(weights)
        out.append(weights)
    return out


def test_excess_mtl_equals_libmtls_weights_when_every_task_is_present():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(5)]
    b = build("excess_mtl", "abc", robust_step_size=0.5)
    for g, expected in zip(grads, libmtl_excess(grads, 0.5)):
        b.aggregate(g, torch.ones(3, dtype=torch.bool))
        assert torch.allclose(b.last_weights.double(), expected, atol=1e-6)


def test_excess_mtl_baseline_waits_for_a_tasks_first_labelled_batch():
    b = build("excess_mtl", "ab")
    b.aggregate(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([True, False]))  # b absent
    assert float(b.baseline[1]) == 0 and float(b.last_weights[1]) == 0
    b.aggregate(torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([True, True]))
    assert float(b.baseline[1]) > 0 and float(b.last_weights[1]) < 3   # no saturated weight


def test_modo_and_sdmgrad_use_two_earlier_batches_for_the_weights():
    """λ_t depends on J_{t−2} J_{t−1}ᵀ; the direction on J_t (three independent batches)."""
    j1, j2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    j3 = torch.tensor([[5.0, 0.0], [0.0, 0.1]])
    present = torch.ones(2, dtype=torch.bool)
    b = build("modo", "ab", gamma=0.1, rho=0.0)
    for j in (j1, j2):
        b.aggregate(j, present)
    before = b.last_weights.clone()
    d = b.aggregate(j3, present)
    a = j1 @ j2.T                          # diag(1, 3)
    expected = before - 0.1 * (a @ before)
    expected = expected - (expected.sum() - 1) / 2  # onto the simplex (both stay positive here)
    assert torch.allclose(b.last_weights, expected, atol=1e-6)
    assert torch.allclose(d, expected @ j3, atol=1e-6)
    s = build("sdmgrad", "ab")
    for j in (j1, j2, j3):
        d = s.aggregate(j, present)
    assert torch.allclose(d, s.last_weights @ j3)
    assert abs(float(s.last_weights.sum()) - 1) < 1e-6


def test_stch_is_a_sum_of_log_losses_in_warmup_then_a_smoothed_max():
    b = build("stch", "ab", mu=0.5, warmup_epochs=1)
    losses = {"a": torch.tensor(2.0, requires_grad=True), "b": torch.tensor(0.5, requires_grad=True)}
    assert abs(float(b.combine(losses).detach()) - float(np.log(2.0) + np.log(0.5))) < 1e-6
    b.epoch_end(0, {"a": 1.0, "b": 1.0})
    value = float(b.combine(losses).detach())
    logs = np.array([np.log(2.0), np.log(0.5)])
    assert abs(value - 2 * 0.5 * np.log(np.exp(logs / 0.5).sum())) < 1e-5
    assert value >= 2 * logs.max() - 1e-6   # T · (μ-smoothed max) ≥ T · max
