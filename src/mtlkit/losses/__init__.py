"""Per-row loss functions computed from logits, looked up by name.

Each loss maps ``(logits, target)`` to a per-row loss tensor of shape ``(B,)``;
:class:`mtlkit.tasks.Task` applies sample weights and task-space masks on top.
"""

from mtlkit.losses.registry import LOSSES, RowLoss, get_loss

__all__ = ["LOSSES", "RowLoss", "get_loss"]
