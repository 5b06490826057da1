"""AliExpress search logs (Li et al., CIKM 2020) in the MTReclib layout, one country at a time.

Source: Tianchi dataset 74690 (https://tianchi.aliyun.com/dataset/74690; a Tianchi account is
needed), one archive per country. MTReclib (github.com/easezyc/Multitask-Recommendation-Library,
``data/preprocess.py``) joins its user and item tables on the search id and writes
``AliExpress_<country>/train.csv`` and ``test.csv`` with the columns

* ``search_id`` — the search (request) the impression belongs to: a group for GAUC, not a feature;
* ``categorical_1`` … ``categorical_16`` and ``numerical_1`` … ``numerical_63``;
* ``click``, ``conversion`` — from the raw ``item_49``: 0 → (0, 0), 1 → (1, 0), 2 → (1, 1), so
  a conversion is always a clicked impression.

Tasks: ``ctr`` (label ``click``) and ``ctcvr`` (label ``conversion`` over all impressions, as in
MTReclib's result tables). Countries: NL, ES, FR, US. The source has no validation split:
``validation`` (default 10 %) of the training *searches* are held out with the fixed seed
:data:`SPLIT_SEED`, whole searches at a time so that no request is on both sides.

``root`` is the folder holding ``AliExpress_<country>/`` (or that country folder itself, or
the ``aliexpress_{train,test}_sample.csv`` fixtures). With ``root=None`` the two files are fetched
from ``base_url`` (a mirror of the processed data; Tianchi has no anonymous download) and
verified against ``sha256`` (relative file name → digest).

Example:
    >>> schema = aliexpress_schema()
    >>> len(schema.categorical), len(schema.numeric), [t.label for t in aliexpress_tasks()]
    (16, 63, ['click', 'conversion'])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from mtlkit.data.datasets import DatasetSplits, check_binary, read_csv, source_files
from mtlkit.data.datasets.registry import DATASETS, BuiltinDataset, DatasetOptions
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import Task, TaskKind

COUNTRIES = ("NL", "ES", "FR", "US")
CATEGORICAL = [f"categorical_{i}" for i in range(1, 17)]
NUMERIC = [f"numerical_{i}" for i in range(1, 64)]
LABELS = ["click", "conversion"]
GROUP = "search_id"
SPLIT_SEED = 2020
SOURCE = "https://tianchi.aliyun.com/dataset/74690"


def aliexpress_tasks() -> list[Task]:
    return [Task(name="ctr", kind=TaskKind.BINARY, label="click"), Task(name="ctcvr", kind=TaskKind.BINARY, label="conversion")]


def aliexpress_schema() -> SchemaSpec:
    return SchemaSpec(categorical=[CategoricalFeature(name=c) for c in CATEGORICAL], numeric=[NumericFeature(name=c) for c in NUMERIC])


def read_aliexpress_file(path: Path) -> pa.Table:
    types = {**{c: pa.int64() for c in [GROUP, *CATEGORICAL, *LABELS]}, **{c: pa.float64() for c in NUMERIC}}
    return check_binary(read_csv(path, [GROUP, *CATEGORICAL, *NUMERIC, *LABELS], types), LABELS, path)


def hold_out_searches(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(rest, held out): a seeded ``fraction`` of the distinct search ids, all their rows together."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"aliexpress validation fraction must lie in (0, 1), got {fraction}")
    ids = table.column(GROUP).to_numpy()
    searches = np.unique(ids)
    count = max(1, int(round(fraction * len(searches))))
    if count >= len(searches):
        raise DataError(f"aliexpress: only {len(searches)} searches in the training file, too few to hold out a validation split")
    held = np.random.default_rng(seed).choice(searches, size=count, replace=False)
    in_validation = np.isin(ids, held)
    return table.filter(pa.array(~in_validation)), table.filter(pa.array(in_validation))


def load_aliexpress(
    root: str | Path | None = None,
    country: str = "NL",
    sample: bool | None = None,
    validation: float = 0.1,
    seed: int = SPLIT_SEED,
    base_url: str | None = None,
    sha256: Mapping[str, str] | None = None,
) -> DatasetSplits:
    """Train / validation / test of one country (see the module docstring for the layout)."""
    country = str(country).upper()
    if country not in COUNTRIES:
        raise ConfigError(f"aliexpress country must be one of {', '.join(COUNTRIES)}, got {country!r}")
    full = {split: f"AliExpress_{country}/{split}.csv" for split in ("train", "test")}
    small = {split: f"aliexpress_{split}_sample.csv" for split in ("train", "test")}
    names = small if sample else full
    alternates = {full[s]: [f"{s}.csv", small[s]] for s in full} if sample is None else None
    paths = source_files("aliexpress", root, list(names.values()), alternates, base_url, sha256,
                         no_source=f"Tianchi ({SOURCE}) needs a login, so there is no default base_url")
    train, held_out = hold_out_searches(read_aliexpress_file(paths[names["train"]]), validation, seed)
    test = read_aliexpress_file(paths[names["test"]])
    return DatasetSplits(train, held_out, test, aliexpress_tasks(), aliexpress_schema())


class AliExpressOptions(DatasetOptions):
    root: Path | None = None
    country: str = "NL"
    sample: bool | None = None
    validation: float = Field(default=0.1, gt=0, lt=1)
    seed: int = Field(default=SPLIT_SEED, ge=0)
    base_url: str | None = None
    sha256: dict[str, str] | None = None


DATASETS.register("aliexpress")(BuiltinDataset(AliExpressOptions, lambda o: load_aliexpress(**o.model_dump())))
