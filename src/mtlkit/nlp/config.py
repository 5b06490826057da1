"""The NLP run configuration: a YAML file with a top-level ``encoder:``, run by ``mtlkit train``.

A config with ``encoder:`` is an NLP run (every other run config has ``data:`` and
``features:``); both go through ``mtlkit train CONFIG``. Each entry of ``tasks`` is one MT-DNN
task_def: ``name``, ``kind`` (a registered task kind: classification, regression, ranking,
mlm, domain, tagging, span_qa, relation, …), the kind's own keys (``labels``, ``metrics``,
``loss_weight``, ``encoder: shared|own``, ``max_length``, ``head: {hidden, dropout}``,
``prediction_inputs: [other tasks]`` (:mod:`mtlkit.nlp.prediction_inputs`), …) and ``data``::

    seed: 0
    encoder: {name: minilm, pooling: auto}     # or a local dir (save_pretrained), or a cached hub id; auto: MiniLM mean, BERT cls
    mixing: {backbone: mmoe, options: {experts: 4, expert_hidden: [384]}}   # optional
    sampling: {strategy: temperature, temperature: 2, cap: 0.5}             # see mtlkit.nlp.sampling
    balancer: {name: fixed}
    train: {epochs: 3, batch_size: 32, lr: 5.0e-5, monitor: loss}
    tasks:
      - name: sst2
        kind: classification
        data: {train: sst2/train.tsv, validation: sst2/dev.tsv, test: sst2/test.tsv, format: glue_tsv,
               max_rows: {train: 4000}}
      - name: mrpc
        kind: classification
        metrics: [accuracy, f1]
        data: {train: mrpc/msr_paraphrase_train.txt, test: mrpc/msr_paraphrase_test.txt, format: mrpc,
               split: {validation: 0.1}}                 # no dev file: a seeded 10 % of train
      - name: rte
        kind: classification
        data: {train: [rte/train.tsv, rte/val.tsv], validation: rte/dev.tsv, format: glue_tsv,
               options: {columns: [index, sentence1, sentence2, label]}}
      - name: stsb
        kind: regression
        data: {train: stsb/sts-train.tsv, validation: stsb/sts-dev.tsv, format: sts}
      - name: genre
        kind: domain                              # adversarial, through gradient reversal
        grl_lambda: 0.1
        data: {train: stsb/sts-train.tsv, validation: stsb/sts-dev.tsv, format: sts}
      - name: lm
        kind: mlm
        data: {from_tasks: [sst2, rte]}           # the texts of other tasks, split by split

``init_from: RUN_DIR`` starts from another run's best weights wherever names and shapes match
(MT-DNN's second stage: fine-tune the multi-task model on one task; see
:mod:`mtlkit.train.warm_start`).

``data``: ``train`` / ``validation`` / ``test`` (a file or a list of files, relative to the
config file), ``format`` (a reader of :mod:`mtlkit.nlp.readers`) and its ``options``; ``split``
holds out seeded fractions of train when validation/test files are missing (``split.group:
paragraph`` keeps the questions of one SQuAD context in one split); ``max_rows`` keeps a
seeded subsample per split (CPU-sized runs). Or ``from_tasks``: the union of those tasks' texts,
each labelled with its source task as ``domain`` (for ``domain`` and ``mlm`` kinds).

``train:`` is the core :class:`~mtlkit.train.spec.TrainSpec` with NLP defaults where a key is
not given: ``batch_size: 32``, ``eval_batch_size: 128``, ``optimizer: adamw``, ``lr: 5e-5``,
``weight_decay: 0.01``, ``schedule: linear``, ``grad_clip: 1.0``. ``sampling.strategy`` defaults
to ``round`` for gradient balancers (they compare the tasks' gradients within a step) and to
MT-DNN's ``proportional`` otherwise.

Example:
    >>> config = parse_nlp_config({
    ...     "encoder": {"name": "/models/tiny"},
    ...     "tasks": [{"name": "sst2", "kind": "classification", "data": {"train": "a.tsv", "format": "glue_tsv"}},
    ...               {"name": "lm", "kind": "mlm", "data": {"from_tasks": ["sst2"]}}]})
    >>> [(e.task.name, e.task.kind, e.task.metrics) for e in config.tasks], config.train.lr
    ([('sst2', 'classification', ['accuracy']), ('lm', 'mlm', ['perplexity'])], 5e-05)
    >>> parse_nlp_config({"encoder": {}, "tasks": [{"name": "x", "kind": "classification",
    ...                   "data": {"train": "a.tsv", "format": "glue_tsv"}, "labesl": ["0", "1"]}]}, "run.yaml")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: run.yaml: key 'tasks.0.labesl': unknown key
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from mtlkit.balancing import BalancerSpec
from mtlkit.config import Seed
from mtlkit.errors import ConfigError, validation_error
from mtlkit.nlp.base import NLP_KINDS, NLPTask
from mtlkit.nlp.encoder import EncoderSpec
from mtlkit.nlp.model import MixingSpec
from mtlkit.nlp.sampling import SamplingSpec
from mtlkit.train.spec import TrainSpec

NLP_TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 32, "eval_batch_size": 128, "optimizer": "adamw", "lr": 5e-5,
                      "weight_decay": 0.01, "schedule": "linear", "grad_clip": 1.0}
SPLITS = ("train", "validation", "test")


class HoldoutSpec(BaseModel):
    """Seeded fractions of the training file held out when validation / test files are missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    validation: float = Field(default=0.1, gt=0, lt=1)
    test: float = Field(default=0.0, ge=0, lt=1)
    seed: Seed = 0
    group: str | None = None  # an example attribute kept within one split (``paragraph`` for QA: no shared contexts)


class TaskData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    train: list[Path] | None = None
    validation: list[Path] | None = None
    test: list[Path] | None = None
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    split: HoldoutSpec | None = None
    max_rows: dict[str, int] = Field(default_factory=dict)
    from_tasks: list[str] | None = None

    @field_validator("train", "validation", "test", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _one_source(self) -> TaskData:
        if (self.train is None) == (self.from_tasks is None):
            raise ValueError("give either `train` (files, with `format`) or `from_tasks` (names of other tasks)")
        if self.from_tasks is not None:
            extra = [k for k in ("validation", "test", "format", "split") if getattr(self, k) is not None] + (["options"] if self.options else [])
            if extra:
                raise ValueError(f"`{extra[0]}` does not go with `from_tasks` (the source tasks' splits are used)")
            if not self.from_tasks:
                raise ValueError("`from_tasks` needs at least one task name")
        elif self.format is None:
            from mtlkit.nlp.readers import names

            raise ValueError(f"`format` is required with `train` (one of: {', '.join(names())})")
        else:
            from mtlkit.nlp.readers import check_options, names

            if self.format not in names():
                raise ValueError(f"unknown format {self.format!r}; choose one of: {', '.join(names())}")
            check_options(self.format, self.options)
        for split, rows in self.max_rows.items():
            if split not in SPLITS or rows < 1:
                raise ValueError(f"`max_rows` maps a split ({', '.join(SPLITS)}) to a row count >= 1, got {split}: {rows}")
        return self


class NLPTaskEntry(BaseModel):
    """One validated task definition with its data."""

    model_config = ConfigDict(frozen=True)
    task: SerializeAsAny[NLPTask]
    data: TaskData


class NLPRunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: Seed = 0
    encoder: EncoderSpec
    mixing: MixingSpec | None = None
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    tasks: list[NLPTaskEntry] = Field(min_length=1)
    balancer: BalancerSpec = Field(default_factory=BalancerSpec)
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(**NLP_TRAIN_DEFAULTS))
    init_from: Path | None = None  # a run directory (its best.pt) or checkpoint: MT-DNN's fine-tuning stage

    @field_validator("train", mode="before")
    @classmethod
    def _nlp_defaults(cls, value: Any) -> Any:
        return {**NLP_TRAIN_DEFAULTS, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> NLPRunConfig:
        names = [e.task.name for e in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        with_files = {e.task.name for e in self.tasks if e.data.train is not None}
        for e in self.tasks:
            for source in e.data.from_tasks or []:
                if source not in with_files:
                    raise ValueError(f"task {e.task.name!r}: from_tasks names {source!r}, which is not a task with data files")
        from mtlkit.nlp.prediction_inputs import check_prediction_inputs

        check_prediction_inputs(self.task_list())
        for name in self.sampling.main or []:
            if name not in names:
                raise ValueError(f"sampling.main: unknown task {name!r}")
        for i, stage in enumerate(self.sampling.stages or []):
            unknown = [t for t in stage.tasks if t not in names]
            if unknown:
                raise ValueError(f"sampling.stages[{i}].tasks: unknown task {unknown[0]!r}; tasks are: {', '.join(names)}")
        if self.sampling.stages:
            staged = {t for stage in self.sampling.stages for t in stage.tasks}
            missing = [t for t in names if t not in staged]
            if missing:
                raise ValueError(f"sampling.stages: task {missing[0]!r} is in no stage (every task is introduced by one)")
            planned = sum(stage.epochs for stage in self.sampling.stages)
            if planned > self.train.epochs:
                raise ValueError(f"sampling.stages: {planned} epochs of stages, but train.epochs is {self.train.epochs}")
        from mtlkit.balancing.base import BALANCERS
        from mtlkit.balancing.gradient import GradientBalancer

        if self.encoder.adapters is not None:
            own = [e.task.name for e in self.tasks if e.task.encoder != "shared"]
            if own:
                raise ValueError(f"encoder.adapters: task {own[0]!r} has `encoder: own`; adapters sit on the one shared encoder")
            if self.mixing is not None:
                raise ValueError("encoder.adapters: mixing reads one shared pooled vector, but with adapters every task has its own")
            from mtlkit.nlp.adapters import adapter_names

            adapter_names(self.encoder.groups or {}, names)  # unknown tasks, a group named after a task outside it
            if issubclass(BALANCERS.get(self.balancer.name), GradientBalancer):
                raise ValueError(f"encoder.adapters: balancer {self.balancer.name!r} compares gradients of shared parameters; "
                                 "with adapters the shared encoder is frozen (use a loss-weighting balancer)")
        if issubclass(BALANCERS.get(self.balancer.name), GradientBalancer) and self.sampling.strategy not in (None, "round"):
            raise ValueError(f"sampling.strategy: balancer {self.balancer.name!r} compares the tasks' gradients within a step, "
                             f"which needs strategy `round` (one batch of every task per step), not {self.sampling.strategy!r}")
        return self

    @property
    def strategy(self) -> str:
        """The sampling strategy in force (``round`` for gradient balancers unless set)."""
        if self.sampling.strategy is not None:
            return self.sampling.strategy
        from mtlkit.balancing.base import BALANCERS
        from mtlkit.balancing.gradient import GradientBalancer

        return "round" if issubclass(BALANCERS.get(self.balancer.name), GradientBalancer) else "proportional"

    def task_list(self) -> list[NLPTask]:
        return [e.task for e in self.tasks]

    def resolve_paths(self, base: Path) -> NLPRunConfig:
        """Data files relative to ``base`` (the config's folder), stored absolute; so is a local encoder dir."""
        entries = []
        for e in self.tasks:
            update = {s: [(base / p).resolve() if not p.is_absolute() else p for p in getattr(e.data, s)]
                      for s in SPLITS if getattr(e.data, s) is not None}
            entries.append(e.model_copy(update={"data": e.data.model_copy(update=update)}))
        encoder = {k: str((base / v).resolve()) for k in ("name", "tokenizer")
                   if (v := getattr(self.encoder, k)) and not Path(v).is_absolute() and (base / v).exists()}
        init = {"init_from": (base / self.init_from).resolve()} if self.init_from and not self.init_from.is_absolute() else {}
        return self.model_copy(update={"tasks": entries, "encoder": self.encoder.model_copy(update=encoder).resolved(), **init})


def _parse_task(i: int, entry: Any, source: str) -> NLPTaskEntry:
    import mtlkit.nlp.kinds  # noqa: F401  (register the kinds and metrics)
    from mtlkit.metrics import METRICS

    where = f"tasks.{i}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: key '{where}': expected a mapping (name, kind, data, …)")
    entry = dict(entry)
    kind, data = entry.pop("kind", None), entry.pop("data", None)
    if kind is None:
        raise ConfigError(f"{source}: key '{where}.kind': required key is missing (one of: {', '.join(NLP_KINDS.names())})")
    if kind not in NLP_KINDS:
        raise ConfigError(f"{source}: key '{where}.kind': unknown NLP task kind {kind!r}; choose one of: {', '.join(NLP_KINDS.names())}")
    if data is None:
        raise ConfigError(f"{source}: key '{where}.data': required key is missing")
    cls = NLP_KINDS.get(kind)
    try:
        task = cls.model_validate(entry)
    except ValidationError as error:
        raise validation_error(error, source, where) from None
    try:
        data = TaskData.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, source, f"{where}.data") from None
    except ConfigError as error:
        raise ConfigError(f"{source}: key '{where}.data': {error}") from None
    metrics = task.metrics or task.metrics_by_default()
    supported = getattr(cls, "supported_metrics", None)
    for name in metrics:
        if name not in METRICS or (supported is not None and name not in supported):
            choose = supported if supported is not None else METRICS.names()
            raise ConfigError(f"{source}: key '{where}.metrics': {name!r} is not a metric of kind {kind!r}; choose from: {', '.join(choose)}")
    return NLPTaskEntry(task=task.model_copy(update={"metrics": metrics}), data=data)


def parse_nlp_config(raw: dict[str, Any], source: str = "config") -> NLPRunConfig:
    """Validate a parsed YAML mapping; every error is one line naming ``source`` and the key."""
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{source}: key 'tasks': a non-empty list of task definitions is required")
    entries = [_parse_task(i, entry, source) for i, entry in enumerate(tasks)]
    try:
        config = NLPRunConfig.model_validate({**raw, "tasks": entries})
    except ValidationError as error:
        raise validation_error(error, source) from None
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    from mtlkit.train.selection import check_monitor

    try:
        check_monitor(config.train.monitor, config.task_list())
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return config


def dump_nlp_config(config: NLPRunConfig) -> str:
    """YAML that :func:`parse_nlp_config` reads back to the same config (tasks flat, with ``kind``)."""
    body = config.model_dump(mode="json", exclude={"tasks"}, exclude_none=True)
    # keys a strategy does not use must stay unset, or reading the file back rejects them
    body["sampling"] = config.sampling.model_dump(mode="json", exclude_none=True, exclude_unset=True)
    tasks = [{"name": e.task.name, "kind": e.task.kind, **e.task.model_dump(mode="json", exclude_none=True, exclude={"name"}),
              "data": e.data.model_dump(mode="json", exclude_none=True, exclude_defaults=True)} for e in config.tasks]
    ordered = {"seed": body.pop("seed"), "encoder": body.pop("encoder"), **body, "tasks": tasks}
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


__all__ = ["HoldoutSpec", "NLPRunConfig", "NLPTaskEntry", "NLP_TRAIN_DEFAULTS", "TaskData", "dump_nlp_config", "parse_nlp_config"]
