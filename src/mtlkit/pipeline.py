"""One run pipeline for tabular and NLP runs: the kind of a run is decided once.

A config file with a top-level ``encoder:`` is an NLP run (:mod:`mtlkit.nlp.run`); every other one
is a tabular run (:mod:`mtlkit.run`). Both write the same run directory (:mod:`mtlkit.rundir`:
``config.yaml`` first, resumable from its first byte, ``summary.json`` last), train with the same
:class:`~mtlkit.train.Trainer` and balancers, and answer ``train``, ``evaluate`` and ``predict``
through one :class:`RunKind`, so the CLI picks the kind once — from the config (:func:`kind_of_config`)
or from a run directory (:func:`kind_of_run`) — and never branches on it again.

Example:
    >>> import tempfile, pathlib
    >>> directory = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (directory / "config.yaml").write_text("encoder: {name: minilm}\\n")
    >>> kind_of_run(directory).name
    'nlp'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mtlkit.config import RunConfig, is_nlp_run
from mtlkit.errors import ConfigError
from mtlkit.registry import Registry

if TYPE_CHECKING:
    from mtlkit.doctor.findings import DoctorReport
    from mtlkit.nlp.config import NLPRunConfig
    from mtlkit.run import Evaluation, PreparedData


class RunKind:
    """What the CLI asks of a kind of run. Options a kind does not take are a ConfigError naming them."""

    name: ClassVar[str] = ""
    #: ``mtlkit predict``'s output file when ``--out`` is not given.
    default_predictions: ClassVar[str] = "predictions.csv"

    def check_data(self, config: Any, time_column: str | None) -> tuple[PreparedData, DoctorReport]:
        """``mtlkit train --doctor``: the data read once and checked (:mod:`mtlkit.doctor`)."""
        raise ConfigError(f"--doctor / --time-column check tabular data; an {self.name.upper()} config has none to check")

    def train(self, config: Any, run_dir: Path, *, overwrite: bool, progress: bool | None,
              prepared: PreparedData | None = None) -> dict[str, Any]:
        """Train (or resume) into ``run_dir``; the run's ``summary.json``."""
        raise NotImplementedError

    def evaluate(self, run_dir: Path, data: Path | None) -> Evaluation:
        """The best checkpoint's metrics on the run's splits, or on ``data``."""
        raise NotImplementedError

    def predict(self, run_dir: Path, data: Path, out: Path, *, keep: Sequence[str], task: str | None,
                format: str | None) -> int:
        """Write the predictions for ``data`` to ``out``; the number of rows (records) written."""
        raise NotImplementedError


RUN_KINDS: Registry[type[RunKind]] = Registry("run kind")


@RUN_KINDS.register("tabular")
class TabularRuns(RunKind):
    """Ranking and other tabular runs: a schema, features, one row per example (:mod:`mtlkit.run`)."""

    name = "tabular"

    def check_data(self, config: RunConfig, time_column: str | None) -> tuple[PreparedData, DoctorReport]:
        from mtlkit.doctor import diagnose_config  # (the doctor only when asked)

        return diagnose_config(config, time_column)

    def train(self, config: RunConfig, run_dir: Path, *, overwrite: bool, progress: bool | None,
              prepared: PreparedData | None = None) -> dict[str, Any]:
        from mtlkit.run import train_run  # (torch and the models load with the work)

        return train_run(config, run_dir, overwrite=overwrite, progress=progress, prepared=prepared)

    def evaluate(self, run_dir: Path, data: Path | None) -> Evaluation:
        from mtlkit.run import evaluate_run

        return evaluate_run(run_dir, data)

    def predict(self, run_dir: Path, data: Path, out: Path, *, keep: Sequence[str], task: str | None,
                format: str | None) -> int:
        from mtlkit.run import predict_run

        if task is not None or format is not None:
            raise ConfigError("--task / --format are for NLP runs; a tabular run predicts every task from the feature columns")
        return predict_run(run_dir, data, out, keep)


@RUN_KINDS.register("nlp")
class NLPRuns(RunKind):
    """One encoder shared by text tasks, each with its own data (:mod:`mtlkit.nlp.run`)."""

    name = "nlp"
    default_predictions = "predictions.jsonl"

    def train(self, config: NLPRunConfig, run_dir: Path, *, overwrite: bool, progress: bool | None,
              prepared: PreparedData | None = None) -> dict[str, Any]:
        from mtlkit.nlp.run import train_nlp_run  # (transformers loads with the work)

        return train_nlp_run(config, run_dir, overwrite=overwrite, progress=progress)

    def evaluate(self, run_dir: Path, data: Path | None) -> Evaluation:
        from mtlkit.nlp.run import evaluate_nlp_run
        from mtlkit.run import Evaluation

        if data is not None:
            raise ConfigError("--data: an NLP run is evaluated on the splits of its config.yaml")
        return Evaluation(evaluate_nlp_run(run_dir), None)

    def predict(self, run_dir: Path, data: Path, out: Path, *, keep: Sequence[str], task: str | None,
                format: str | None) -> int:
        from mtlkit.nlp.predict import predict_nlp_run

        if keep:
            raise ConfigError("--keep copies columns of a tabular input; an NLP run writes one record per example, in input order")
        return predict_nlp_run(run_dir, data, out, task=task, format=format)


def kind_of_config(config: RunConfig | NLPRunConfig) -> RunKind:
    """The kind of run a loaded config (:func:`mtlkit.config.load_any_config`) describes."""
    return RUN_KINDS.get("tabular" if isinstance(config, RunConfig) else "nlp")()


def kind_of_run(run_dir: str | Path) -> RunKind:
    """The kind of run that wrote ``run_dir`` (a damaged config.yaml counts as tabular: loading it reports the damage)."""
    return RUN_KINDS.get("nlp" if is_nlp_run(run_dir) else "tabular")()


__all__ = ["NLPRuns", "RUN_KINDS", "RunKind", "TabularRuns", "kind_of_config", "kind_of_run"]
