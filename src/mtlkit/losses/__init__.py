"""Per-row loss functions computed from logits, looked up by name, and calibration corrections.

Each loss maps ``(logits, target, **options)`` to a per-row loss tensor of shape ``(B,)``;
:class:`mtlkit.tasks.Task` applies sample weights and task-space masks on top.
"""

from mtlkit.losses.calibration import correct_downsampled, correct_downsampled_logits
from mtlkit.losses.registry import LOSS_OPTIONS, LOSSES, RowLoss, get_loss, validate_loss_options

__all__ = [
    "LOSSES",
    "LOSS_OPTIONS",
    "RowLoss",
    "correct_downsampled",
    "correct_downsampled_logits",
    "get_loss",
    "validate_loss_options",
]
