"""An NLP run trained whole, and the same run stopped mid-training and resumed: what the exact-resume tests compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def train_whole_and_resumed(config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_at: int) -> tuple[dict, dict]:
    """The summaries of ``config`` trained in ``tmp_path/whole``, and trained in ``tmp_path/resumed`` where a
    KeyboardInterrupt stops it at its ``interrupt_at``-th step and a second call resumes it from its checkpoint."""
    import mtlkit.nlp.run as nlp_run

    whole = nlp_run.train_nlp_run(config, tmp_path / "whole")
    original, seen = nlp_run.TaskSampler.epoch, [0]

    def interrupted(self, epoch=0, start_step=0):
        for step in original(self, epoch, start_step):
            seen[0] += 1
            if seen[0] == interrupt_at:
                raise KeyboardInterrupt
            yield step

    monkeypatch.setattr(nlp_run.TaskSampler, "epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nlp_run.train_nlp_run(config, tmp_path / "resumed")
    monkeypatch.setattr(nlp_run.TaskSampler, "epoch", original)
    return whole, nlp_run.train_nlp_run(config, tmp_path / "resumed")


def validation_log(run_dir: Path) -> list[dict]:
    """Each line of the run's metrics.jsonl, its ``val/`` entries only."""
    return [{k: v for k, v in json.loads(line).items() if k.startswith("val/")} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
