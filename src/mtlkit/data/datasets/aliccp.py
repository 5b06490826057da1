"""Ali-CCP, Alibaba's click and conversion logs (Ma et al., SIGIR 2018, ESMM), as ESMM/AITM use it.

Source: Tianchi dataset 408 (https://tianchi.aliyun.com/dataset/408): 84M impressions, 3.4M clicks,
18k purchases in ``sample_skeleton_{train,test}.csv`` + ``common_features_{train,test}.csv``
(~38 GB), downloadable only with a Tianchi account. We read the three CSVs that torch-rechub's
``examples/ranking/data/ali-ccp/preprocess_ali_ccp.py`` makes from them (MIT, Datawhale 2022):

* ``ali_ccp_train.csv`` — the Tianchi training file;
* ``ali_ccp_val.csv`` / ``ali_ccp_test.csv`` — the Tianchi test file split 50/50 (random_state 2022);
* columns ``click, purchase``, 23 sparse fields (``101, 121, …, 150_14``: ids label-encoded on
  the training file, values seen fewer than 10 times → 0) and 8 dense fields (``D109_14, …,
  D853``, min-max scaled to [0, 1]). The script drops impressions with a purchase but no click.

Tasks follow ESMM's entire space (every impression):

* ``ctr`` — label ``click``;
* ``ctcvr`` — label ``ctcvr`` = click AND purchase (added column), the target of ESMM's
  pCTCVR = pCTR × pCVR. The CVR task itself lives on clicked impressions only: evaluate a CVR
  model, or train the naive baseline, with
  ``Task(name="cvr", kind="binary", label="purchase", mask=TaskMask(column="click"))``.

``root`` holds the three files (or the ``*_sample.csv`` fixtures of the same layout). With
``root=None`` the files are fetched from ``base_url`` — a mirror you trust, since Tianchi needs a
login — and verified against ``sha256`` (file name → digest).

Example:
    >>> from pathlib import Path
    >>> data = load_aliccp(Path("../shared/data/ali_ccp_sample"))   # doctest: +SKIP
    >>> [t.name for t in aliccp_tasks()], len(aliccp_schema().categorical), len(aliccp_schema().numeric)
    (['ctr', 'ctcvr'], 23, 8)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from mtlkit.data.datasets import DatasetSplits, check_binary, read_csv, source_files
from mtlkit.data.datasets.registry import DATASETS, BuiltinDataset, DatasetOptions
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.tasks import Task, TaskKind

SPARSE = [
    "101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
    "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14",
]
DENSE = ["D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853"]
LABELS = ["click", "purchase"]
SPLITS = {"train": "ali_ccp_train", "validation": "ali_ccp_val", "test": "ali_ccp_test"}
SOURCE = "https://tianchi.aliyun.com/dataset/408"


def aliccp_tasks() -> list[Task]:
    return [Task(name="ctr", kind=TaskKind.BINARY, label="click"), Task(name="ctcvr", kind=TaskKind.BINARY, label="ctcvr")]


def aliccp_schema() -> SchemaSpec:
    # Dense fields are already min-max scaled by the preprocessing; standardising keeps them comparable.
    return SchemaSpec(categorical=[CategoricalFeature(name=c) for c in SPARSE], numeric=[NumericFeature(name=c) for c in DENSE])


def read_aliccp_file(path: Path) -> pa.Table:
    """One preprocessed CSV with its 0/1 labels checked and the ``ctcvr`` column added."""
    types = {**{c: pa.int64() for c in [*LABELS, *SPARSE]}, **{c: pa.float64() for c in DENSE}}
    table = check_binary(read_csv(path, [*LABELS, *SPARSE, *DENSE], types), LABELS, path)
    ctcvr = pc.multiply(table.column("click"), table.column("purchase"))
    return table.append_column("ctcvr", pc.cast(ctcvr, pa.int8()))


def load_aliccp(
    root: str | Path | None = None,
    sample: bool | None = None,
    base_url: str | None = None,
    sha256: Mapping[str, str] | None = None,
) -> DatasetSplits:
    """Train / validation / test of the preprocessed Ali-CCP (see the module docstring).

    ``sample``: None takes ``ali_ccp_<split>.csv`` and falls back to ``ali_ccp_<split>_sample.csv``
    under ``root``; True / False pick one layout (for a download, None means the full files).
    """
    full = {split: f"{stem}.csv" for split, stem in SPLITS.items()}
    small = {split: f"{stem}_sample.csv" for split, stem in SPLITS.items()}
    names = small if sample else full
    alternates = {full[s]: [small[s]] for s in SPLITS} if sample is None else None
    paths = source_files("ali_ccp", root, list(names.values()), alternates, base_url, sha256,
                         no_source=f"Tianchi ({SOURCE}) needs a login, so there is no default base_url")
    tables = {split: read_aliccp_file(paths[name]) for split, name in names.items()}
    return DatasetSplits(tables["train"], tables["validation"], tables["test"], aliccp_tasks(), aliccp_schema())


class AliCCPOptions(DatasetOptions):
    root: Path | None = None
    sample: bool | None = None
    base_url: str | None = None
    sha256: dict[str, str] | None = None


DATASETS.register("ali_ccp")(BuiltinDataset(AliCCPOptions, lambda o: load_aliccp(**o.model_dump())))
