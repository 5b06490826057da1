"""Single-task baseline: one independent network per task, the reference for every MTL result.

Each task gets its own embedding table, bottom MLP (the same ``hidden`` as shared-bottom) and
tower, so per task it has exactly the capacity of the multi-task model's path for that task and
shares nothing. The networks are trained in one process for convenience; because no parameter
is shared, each receives only its own task's gradient, and the trainer selects each task's best
epoch on its own validation metric — the same as training the tasks separately.

Example:
    >>> import torch
    >>> bb = SingleTask(10, ["a"], SingleTask.Options(hidden=[8]))
    >>> bb(torch.zeros(1, 10))["a"].shape
    torch.Size([1, 8])
"""

from __future__ import annotations

from mtlkit.models.base import BACKBONES
from mtlkit.models.shared_bottom import SharedBottom


@BACKBONES.register("single_task")
class SingleTask(SharedBottom):
    independent_tasks = True
