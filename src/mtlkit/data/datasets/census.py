"""UCI Census-Income (KDD) with the MMoE paper's protocol (Ma et al., KDD 2018, §6.3).

Two task groups, both with "marital status == Never married" as the second task:

* group 1: ``income`` — income over 50K (label ``50000+.``);
* group 2: ``education`` — education of at least some college. The paper does not list the
  levels; we count ``Some college but no degree``, both ``Associates degree`` levels,
  ``Bachelors``, ``Masters``, ``Prof school`` and ``Doctorate`` as college (see
  :data:`COLLEGE_LEVELS`).

The columns a group's labels come from (``income`` or ``education``, and ``marital_stat``) and
the ``instance_weight`` column (census.names: "should not be used in the classifiers") are
removed from the inputs. The remaining 39 columns are 7 numeric and 32 categorical features.
The 199,523 training rows train; the 99,762 test rows are split 1:1 into validation and test
with the fixed seed :data:`SPLIT_SEED`, as in the paper.

``load_census(root)`` reads ``census-income.data.gz`` and ``census-income.test.gz`` from
``root``; with ``root=None`` it downloads them from the UCI archive into the cache
(``$MTLKIT_CACHE`` or ``~/.cache/mtlkit``) and verifies their SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mtlkit.data.datasets import DatasetSplits
from mtlkit.data.datasets.registry import DATASETS, BuiltinDataset, DatasetOptions
from mtlkit.data.download import cache_dir, fetch
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.errors import DataError
from mtlkit.tasks import Task, TaskKind

COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends",
    "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
    "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt",
    "num_emp", "fam_under_18", "country_father", "country_mother", "country_self", "citizenship",
    "own_or_self", "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k",
]
NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"]
COLLEGE_LEVELS = frozenset({
    "Some college but no degree",
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
})
SPLIT_SEED = 2018
BASE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/"
FILES = {  # file name -> sha256 of the uncompressed content
    "census-income.data.gz": "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86",
    "census-income.test.gz": "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c",
}
GROUPS = {1: ("income", "income_50k"), 2: ("education", "education")}
LOG_SCALED = {"wage_per_hour", "capital_gains", "capital_losses", "stock_dividends"}  # heavy-tailed amounts


@dataclass
class CensusData:
    train: pa.Table
    validation: pa.Table
    test: pa.Table
    tasks: list[Task]
    schema: SchemaSpec


def census_files(root: str | Path | None = None, base_url: str = BASE_URL) -> dict[str, Path]:
    """Local paths of the two files, downloading (and verifying) them when ``root`` is None."""
    if root is not None:
        paths = {name: Path(root) / name for name in FILES}
        for path in paths.values():
            if not path.exists():
                raise DataError(f"{path}: no such file (census root must hold {', '.join(FILES)})")
        return paths
    target = cache_dir("census_income_kdd")
    return {name: fetch(base_url + name, target / name, sha256) for name, sha256 in FILES.items()}


def read_census_file(path: Path) -> pa.Table:
    """Raw UCI rows with whitespace stripped; numeric columns as float64, the rest as strings."""
    try:
        raw = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=COLUMNS),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in COLUMNS}),
        )
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a census-income file: {str(error).splitlines()[0]}") from None
    columns = {}
    for name in COLUMNS:
        values = pc.utf8_trim_whitespace(raw.column(name))
        columns[name] = pc.cast(values, pa.float64()) if name in NUMERIC else values
    return pa.table(columns)


def census_labels(table: pa.Table, group: int) -> pa.Table:
    """Add the 0/1 label columns of ``group`` and drop the columns they come from."""
    if group not in GROUPS:
        raise DataError(f"census group must be 1 or 2, got {group}")
    first_task, source = GROUPS[group]
    if group == 1:
        first = pc.equal(table.column(source), "50000+.")
    else:
        first = pc.is_in(table.column(source), value_set=pa.array(sorted(COLLEGE_LEVELS)))
    marital = pc.equal(table.column("marital_stat"), "Never married")
    dropped = {source, "marital_stat", "instance_weight"}
    kept = table.select([c for c in table.column_names if c not in dropped])
    return kept.append_column(first_task, pc.cast(first, pa.int8())).append_column("marital", pc.cast(marital, pa.int8()))


def census_schema(group: int = 1) -> SchemaSpec:
    dropped = {GROUPS[group][1], "marital_stat", "instance_weight"}
    categorical = [c for c in COLUMNS if c not in NUMERIC and c not in dropped]
    return SchemaSpec(
        categorical=[CategoricalFeature(name=c) for c in categorical],
        # Heavy-tailed money columns get log1p before standardising.
        numeric=[NumericFeature(name=c, transform="log1p" if c in LOG_SCALED else "standard") for c in NUMERIC],
    )


def census_tasks(group: int = 1) -> list[Task]:
    return [Task(name=GROUPS[group][0], kind=TaskKind.BINARY), Task(name="marital", kind=TaskKind.BINARY)]


def load_census(root: str | Path | None = None, group: int = 1, base_url: str = BASE_URL) -> CensusData:
    """Train / validation / test tables, tasks and feature schema of census ``group``."""
    paths = census_files(root, base_url)
    train = census_labels(read_census_file(paths["census-income.data.gz"]), group)
    holdout = census_labels(read_census_file(paths["census-income.test.gz"]), group)
    order = np.random.default_rng(SPLIT_SEED).permutation(holdout.num_rows)
    half = holdout.num_rows // 2
    validation = holdout.take(np.sort(order[:half]))
    test = holdout.take(np.sort(order[half:]))
    return CensusData(train, validation, test, census_tasks(group), census_schema(group))


class CensusOptions(DatasetOptions):
    root: Path | None = None  # a folder with the census files; None downloads them (SHA-256 verified)
    group: Literal[1, 2] = 1  # the MMoE paper's task groups: 1 income + marital, 2 education + marital


def _load(options: CensusOptions) -> DatasetSplits:
    census = load_census(options.root, options.group)
    return DatasetSplits(census.train, census.validation, census.test, census.tasks, census.schema)


DATASETS.register("census_income")(BuiltinDataset(CensusOptions, _load))
