"""The run configuration: one YAML file, validated completely before any work starts.

Example:
    >>> config = RunConfig.model_validate({
    ...     "data": {"train": "train.csv", "split": {"validation": 0.1, "test": 0.1}},
    ...     "features": {"categorical": ["user", "item"], "numeric": [{"name": "price", "transform": "log1p"}]},
    ...     "tasks": [{"name": "click", "kind": "binary"}],
    ...     "model": {"backbone": "shared_bottom", "options": {"hidden": [64]}},
    ... })
    >>> config.features.categorical[0].name, config.model.options
    ('user', {'hidden': [64]})
    >>> load_config_text("data: {train: a.csv}\\nmodle: {}\\n", "run.yaml")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: run.yaml: key 'modle': unknown key
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtlkit.balancing import BalancerSpec
from mtlkit.data.datasets import DATASETS
from mtlkit.data.derived_targets import DerivedTarget
from mtlkit.data.schema import SchemaSpec
from mtlkit.data.streaming import StreamingSpec
from mtlkit.errors import ConfigError, validation_error
from mtlkit.models import ModelSpec
from mtlkit.safe_yaml import load_yaml, read_yaml_file
from mtlkit.tasks import Task
from mtlkit.train.spec import TrainSpec

if TYPE_CHECKING:
    from mtlkit.nlp.config import NLPRunConfig

# Seeds feed torch and numpy generators, which take unsigned 64-bit values; offsets (epoch, rank) are added.
Seed = Annotated[int, Field(ge=0, lt=2**63)]

NO_SOURCE = "give either `train` (a file) or `dataset` (one of: " + ", ".join(DATASETS.names()) + ")"


class SplitSpec(BaseModel):
    """Seeded split of the training file when validation/test files are not given."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    validation: float = Field(default=0.1, gt=0, lt=1)
    test: float = Field(default=0.1, ge=0, lt=1)
    seed: Seed = 0


class NegativeSamplingSpec(BaseModel):
    """Keep each negative of ``label`` in the *training* split with probability ``rate`` (all
    positives stay; :func:`mtlkit.data.sampling.downsample_negatives`, seeded). Binary tasks on that
    label get ``negative_sampling_rate: rate``, so their predictions are calibrated back
    (``p / (p + (1 − p)/rate)``); validation and test keep the world's base rate. Rows dropped are
    gone for every task: tasks inside the label's space (e.g. CVR inside clicks) are unaffected,
    independent ones see fewer rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str
    rate: float = Field(gt=0, le=1)
    seed: Seed = 0


class DataSpec(BaseModel):
    """Either files (``train`` plus optional ``validation``/``test``) or a built-in ``dataset``.

    From Python, a config may name neither and pass in-memory tables to
    :func:`mtlkit.run.train_run` instead; the run's ``config.yaml`` then lists those splits under
    ``tables`` (the data itself is not stored: such a run is evaluated on a file or table given
    explicitly).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    train: Path | None = None
    validation: Path | None = None
    test: Path | None = None
    split: SplitSpec | None = None
    dataset: str | None = None  # a name in mtlkit.data.datasets.DATASETS
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    streaming: StreamingSpec | None = None  # stream `train` from Parquet (mtlkit.data.streaming)
    negative_sampling: NegativeSamplingSpec | None = None  # down-sample the training split's negatives
    tables: list[Literal["train", "validation", "test"]] | None = None  # splits train_run got in memory
    derived_targets: list[DerivedTarget] = Field(default_factory=list)  # leakage-safe distribution targets (data/derived_targets.py)

    @property
    def has_source(self) -> bool:
        return self.train is not None or self.dataset is not None or bool(self.tables)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str | None) -> str | None:
        if name is not None and name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS.names())}")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [key for key in ("train", "dataset", "tables") if getattr(self, key)]
        if len(given) > 1:
            raise ValueError(f"give one of `train` (a file), `dataset` or `tables`, not {' and '.join(given)}")
        if self.tables and (self.validation or self.test):
            raise ValueError("`tables` (in-memory splits) replaces data files: drop validation/test")
        if self.dataset is not None and (self.validation or self.test or self.split):
            raise ValueError("a built-in dataset brings its own splits: drop validation/test/split")
        if self.dataset is None and self.dataset_options:
            raise ValueError("dataset_options needs `dataset`")
        if self.streaming is not None and self.negative_sampling is not None:
            raise ValueError("negative_sampling needs the training split in memory: it cannot be combined with streaming")
        if self.streaming is not None:
            # A streamed file is never held whole, so it cannot be split in memory.
            if self.train is None or self.train.suffix.lower() not in {".parquet", ".pq", ""}:
                raise ValueError("streaming reads `train` from Parquet: a .parquet file or a directory of them")
            if self.validation is None or self.split is not None:
                raise ValueError("streaming needs a `validation` file and no `split`: a streamed training file is not split in memory")
            if self.derived_targets:
                raise ValueError("derived_targets need the training split in memory: not with streaming")
        return self


class FeaturesSpec(SchemaSpec):
    """Feature lists; a bare column name stands for a feature with default settings."""

    @field_validator("categorical", "numeric", mode="before")
    @classmethod
    def _names_to_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: Seed = 0
    data: DataSpec = Field(default_factory=DataSpec)  # no source: in-memory tables given to train_run
    features: FeaturesSpec | None = None
    tasks: list[Task] | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    balancer: BalancerSpec = Field(default_factory=BalancerSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    init_from: Path | None = None  # a run directory (its best.pt) or checkpoint: load every tensor whose name and shape match

    @model_validator(mode="after")
    def _complete(self) -> RunConfig:
        if self.data.dataset is None:
            if self.features is None:
                raise ValueError("`features` is required when training on your own files")
            if not self.tasks:
                raise ValueError("`tasks` is required when training on your own files")
        if self.tasks is not None:
            names = [t.name for t in self.tasks]
            if len(set(names)) != len(names):
                raise ValueError(f"task names must be unique, got {names}")
        return self


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    return _top_level(load_yaml(text, source), source)


def _top_level(raw: Any, source: str) -> dict[str, Any]:
    if raw is None:
        raise ConfigError(f"{source}: the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return raw


def load_config_text(text: str, source: str = "config") -> RunConfig:
    return _validate(_read_yaml(text, source), source)


def _validate(raw: dict[str, Any], source: str) -> RunConfig:
    if "encoder" in raw:
        raise ConfigError(f"{source}: an NLP run config (top-level `encoder:`): `mtlkit train` and `mtlkit evaluate` take it, this command does not")
    tasks = raw.get("tasks")
    if isinstance(tasks, list) and any(isinstance(t, dict) and "data" in t for t in tasks):
        raise ConfigError(f"{source}: key 'encoder': tasks with their own `data` make an NLP run, which needs a top-level "
                          "`encoder:` (e.g. `encoder: {name: minilm}`)")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as error:
        raise validation_error(error, source) from None
    except ConfigError as error:  # raised by registries inside validators
        raise ConfigError(f"{source}: {error}") from None
    if not config.data.has_source:  # only a config built in Python may leave it to in-memory tables
        raise ConfigError(f"{source}: key 'data': {NO_SOURCE}")
    return config


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML file")
    return path


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (UTF-8, no duplicate keys: :mod:`mtlkit.safe_yaml`)."""
    path = _existing_file(path)
    return _top_level(read_yaml_file(path), str(path))


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    return resolve_paths(_validate(read_config_file(path), str(path)), path.parent)


def load_any_config(path: str | Path) -> RunConfig | NLPRunConfig:
    """A tabular :class:`RunConfig`, or an NLP run config when the file has a top-level ``encoder:``."""
    path = Path(path)
    raw = read_config_file(path)
    if "encoder" not in raw:
        return resolve_paths(_validate(raw, str(path)), path.parent)
    from mtlkit.nlp.config import parse_nlp_config

    return parse_nlp_config(raw, str(path)).resolve_paths(path.parent)


def is_nlp_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was written by an NLP run (its config.yaml has a top-level ``encoder:``)."""
    path = Path(run_dir) / "config.yaml"
    try:
        raw = read_yaml_file(path) if path.is_file() else None
    except ConfigError:  # a damaged config.yaml: loading the run reports it
        return False
    return isinstance(raw, dict) and "encoder" in raw


def resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    """Relative data paths are relative to the config file's directory; stored absolute."""
    updates = {}
    for key in ("train", "validation", "test"):
        value = getattr(config.data, key)
        if value is not None and not value.is_absolute():
            updates[key] = (base / value).resolve()
    options = dict(config.data.dataset_options)
    if "root" in options and options["root"] is not None and not Path(options["root"]).is_absolute():
        options["root"] = str((base / options["root"]).resolve())
    data = config.data.model_copy(update={**updates, "dataset_options": options})
    init = {"init_from": (base / config.init_from).resolve()} if config.init_from and not config.init_from.is_absolute() else {}
    return config.model_copy(update={"data": data, **init})


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)
