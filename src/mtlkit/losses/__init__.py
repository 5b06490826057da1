"""Per-row loss functions computed from logits, looked up by name, and calibration corrections.

Each row loss maps ``(logits, target, **options)`` to a per-row loss tensor of shape ``(B,)``;
:class:`mtlkit.tasks.Task` applies sample weights and task-space masks on top. Batch losses
(ranking within a group, OHEM) take the weights and group ids and reduce themselves. One file and
one import line here add a loss.
"""

from mtlkit.losses import ohem, ranking, ziln
from mtlkit.losses.calibration import correct_downsampled, correct_downsampled_logits
from mtlkit.losses.registry import (
    BATCH_LOSSES,
    GROUP_LOSSES,
    LOSS_OPTIONS,
    LOSS_OUTPUT_DIM,
    LOSSES,
    RowLoss,
    get_loss,
    validate_loss_options,
)
from mtlkit.losses.ziln import ziln_expected_value

__all__ = [
    "BATCH_LOSSES",
    "GROUP_LOSSES",
    "LOSSES",
    "LOSS_OPTIONS",
    "LOSS_OUTPUT_DIM",
    "RowLoss",
    "correct_downsampled",
    "correct_downsampled_logits",
    "get_loss",
    "ohem",
    "ranking",
    "validate_loss_options",
    "ziln",
    "ziln_expected_value",
]
