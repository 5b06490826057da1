"""Which tasks belong together: lookahead inter-task affinity (Fifty et al., NeurIPS 2021, TAG).

During a short joint run of one shared model on every task, every ``every`` steps and for each
task ``i``, the shared parameters take a look-ahead step on task ``i``'s gradient alone,
``θ_s' = θ_s − η ∇_{θ_s} L_i`` (task-specific parameters unchanged), and the same batch is scored
again. The affinity of ``i`` onto ``j`` (their Eq. 2) is

    Z_{i→j} = 1 − L_j(θ_s', θ_j) / L_j(θ_s, θ_j),

positive when ``i``'s step also lowers ``j``'s loss. ``Z`` is averaged over the measured steps.
From the same gradients, the gradient cosine ``g_iᵀg_j / (‖g_i‖‖g_j‖)`` is averaged alongside,
and the label correlations (:func:`mtlkit.doctor.checks.check_label_correlation`'s Pearson) come
with it. The grouping (:mod:`mtlkit.study.grouping`, their Eq. 3) picks at most ``k`` models.

Example:
    >>> import torch
    >>> z = lookahead_ratio(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 5.0]))
    >>> z.tolist()
    [0.5, -0.25]
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.study.spec import AffinitySpec


def lookahead_ratio(before: Tensor, after: Tensor) -> Tensor:
    """``1 − after / before`` per task (Fifty et al. Eq. 2); 0 where the loss was 0."""
    return torch.where(before > 0, 1.0 - after / before.clamp_min(1e-12), torch.zeros_like(before))


def _losses(model: Any, tasks: list[Any], batch: Any) -> dict[str, Tensor]:
    logits = model(batch.inputs)
    return {t.name: t.compute_loss(logits[t.name].float(), batch.targets[t.name], batch.weights.get(t.name), batch.masks[t.name])
            for t in tasks if t.name in batch.tasks}


@torch.no_grad()
def _lookahead(model: Any, tasks: list[Any], batch: Any, shared: Sequence[Tensor], grads: list[Any], names: list[str], eta: float) -> Tensor:
    """Row ``i``: ``Z_{i→·}`` of one batch, scored in eval mode (no dropout noise, no batch-norm updates);
    the shared weights are restored exactly after each look-ahead."""
    model.eval()
    saved = [p.detach().clone() for p in shared]
    now = _losses(model, tasks, batch)
    before = torch.stack([now[n] for n in names])
    rows = []
    for task_grads in grads:
        for p, g in zip(shared, task_grads):
            if g is not None:
                p.sub_(eta * g)
        after = _losses(model, tasks, batch)
        rows.append(lookahead_ratio(before, torch.stack([after[n] for n in names])))
        for p, original in zip(shared, saved):
            p.copy_(original)
    model.train()
    return torch.stack(rows)


def label_correlation(prepared: Any, names: list[str]) -> list[list[float | None]]:
    """Pearson correlation of the tasks' labels on the training split (rows where both are present)."""
    from mtlkit.doctor.checks import check_label_correlation
    from mtlkit.doctor.findings import Thresholds
    from mtlkit.doctor.frame import SplitTables

    stats = check_label_correlation(SplitTables({"train": prepared.train}, prepared.names), prepared.tasks, Thresholds()).stats
    index = {t: i for i, t in enumerate(stats["tasks"])}
    return [[stats["matrix"][index[a]][index[b]] if a in index and b in index else None for b in names] for a in names]


def measure_affinity(config: Any, spec: AffinitySpec, seed: int | None = None) -> dict[str, Any]:
    """Run the short joint training and return the affinity and cosine matrices (lists, row = source task)."""
    from mtlkit.balancing.gradient import split_parameters
    from mtlkit.models import build_model
    from mtlkit.run import encode_data, prepare_data

    start = time.perf_counter()
    seed = config.seed if seed is None else seed
    prepared = prepare_data(config)
    encoded = encode_data(prepared)
    tasks = list(prepared.tasks)
    names = [t.name for t in tasks]
    model_spec = config.model
    if model_spec.backbone != spec.backbone:
        options = model_spec.options
        hidden = options.get("hidden") or options.get("expert_hidden") or [128]
        model_spec = model_spec.model_copy(update={"backbone": spec.backbone, "options": {"hidden": hidden}})
    torch.manual_seed(seed)
    model = build_model(model_spec, encoded.schema, tasks)
    model.train()
    shared, _ = split_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    eta = spec.lookahead_lr
    t = len(names)
    z_sum, cos_sum, counted = torch.zeros(t, t), torch.zeros(t, t), 0
    source = encoded.train.batches(config.train.batch_size, shuffle=True, seed=seed)
    for epoch in range(spec.epochs):
        for step, (batch,) in enumerate(source.epoch(epoch)):
            losses = _losses(model, tasks, batch)
            measure = step % spec.every == 0 and len(losses) == t
            if measure:
                grads = [torch.autograd.grad(losses[n], shared, retain_graph=True, allow_unused=True) for n in names]
            optimizer.zero_grad(set_to_none=True)
            # before the look-ahead moves the weights the graph saved
            torch.stack(list(losses.values())).sum().backward()
            if measure:
                z_sum += _lookahead(model, tasks, batch, shared, grads, names, eta)
                flat = torch.stack([torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, shared)]) for gs in grads])
                norms = flat.norm(dim=1).clamp_min(1e-12)
                cos_sum += (flat @ flat.T) / torch.outer(norms, norms)
                counted += 1
            optimizer.step()
    if counted == 0:
        from mtlkit.errors import ConfigError

        raise ConfigError(f"affinity.every: {spec.every} steps is more than an epoch holds: no look-ahead was measured")
    z = (z_sum / counted).tolist()
    cos = (cos_sum / counted).tolist()
    return {"tasks": names, "affinity": z, "cosine": cos, "label_correlation": label_correlation(prepared, names),
            "measurements": counted, "lookahead_lr": eta, "epochs": spec.epochs, "backbone": model_spec.backbone,
            "seconds": time.perf_counter() - start}


def run_affinity(config: Any, spec: AffinitySpec, out: Path | None = None) -> dict[str, Any]:
    """Affinity, cosine, label correlations and the grouping; written to ``out/affinity.json`` when given."""
    from mtlkit.study.grouping import best_grouping

    result = measure_affinity(config, spec)
    grouping = best_grouping(np.array(result["affinity"]), spec.groups)
    result["grouping"] = {"budget": spec.groups, "groups": [[result["tasks"][i] for i in g] for g in grouping.groups],
                          "score": grouping.score}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "affinity.json").write_text(json.dumps(result, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    return result


__all__ = ["label_correlation", "lookahead_ratio", "measure_affinity", "run_affinity"]
