"""A run's per-epoch records on disk: ``metrics.jsonl`` and ``metrics.csv``, and TensorBoard scalars.

A resumed run rewrites both files from the checkpoint's history first, so an epoch that was
recorded after the last checkpoint is never there twice.

Example:
    >>> import tempfile, pathlib
    >>> log = MetricsLog(pathlib.Path(tempfile.mkdtemp()), tensorboard=False)
    >>> log.rewrite([{"epoch": 1, "step": 10, "val/y/auc": 0.7}])
    >>> log.append({"epoch": 2, "step": 20, "val/y/auc": 0.75})
    >>> (log.run_dir / "metrics.csv").read_text().splitlines()
    ['epoch,step,val/y/auc', '1,10,0.7', '2,20,0.75']
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError


def check_tensorboard() -> None:
    """Fail at start-up, not after the first epoch, when the extra is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 (only probing that the optional extra is installed)
    except ImportError:
        raise ConfigError("train.tensorboard: install the extra `mtlkit[tensorboard]`") from None


class MetricsLog:
    """Appends epoch records to ``run_dir`` (nothing without one) and scalars to TensorBoard when asked."""

    def __init__(self, run_dir: Path | None, tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.tensorboard = tensorboard and run_dir is not None
        if self.tensorboard:
            check_tensorboard()
        self._writer: Any = None

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """The files hold exactly ``history`` (a resumed run's checkpointed epochs)."""
        if self.run_dir is None:
            return
        for name in ("metrics.jsonl", "metrics.csv"):
            (self.run_dir / name).unlink(missing_ok=True)
        for record in history:
            self._write(record)

    def append(self, record: Mapping[str, Any]) -> None:
        """One epoch's record; its validation values go to TensorBoard too."""
        self.scalars({k: v for k, v in record.items() if k.startswith("val/")}, int(record["step"]))
        self._write(record)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if not self.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # (the optional extra)

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))  # type: ignore[operator]  # run_dir set
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, record: Mapping[str, Any]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        csv_path = self.run_dir / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)


__all__ = ["MetricsLog", "check_tensorboard"]
