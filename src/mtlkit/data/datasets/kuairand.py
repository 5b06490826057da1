"""KuaiRand short-video logs (Gao et al., CIKM 2022), a multi-behaviour feed from Kuaishou.

Source: https://kuairand.com (github.com/chongminggao/KuaiRand); the archives are on Zenodo,
``https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz`` (45 MB, 194 MB unpacked) and
``KuaiRand-1K.tar.gz``; license CC BY-SA 4.0. From ``KuaiRand-<version>/data/`` we read the two
standard-policy logs (``log_standard_4_08_to_4_21_<v>.csv``, ``log_standard_4_22_to_5_08_<v>.csv``)
and join ``user_features_<v>.csv`` on ``user_id`` and ``video_features_basic_<v>.csv`` on
``video_id``. The random-exposure log and the monthly video statistics (which see the test
period) are not used.

Tasks (binary unless noted), each on every impression unless noted:

* ``is_click`` — a click in the two-column UI; in the single-column feed a *valid play*
  (the whole video if ≤ 7 s, else more than 7 s);
* ``is_like``, ``is_follow`` — the like and follow-the-author buttons;
* ``long_view`` — the whole video if ≤ 18 s, else at least 18 s (derived from ``play_time_ms``
  and ``duration_ms`` with that rule when a file lacks the column);
* ``play_time`` — regression on ``log1p(play_time_ms)`` (``label_transform: log1p``: served in
  ms), masked to ``is_click == 1``. Single-column rows without a valid play still carry a few
  seconds of play; the mask leaves them out, so the task is the play time *given* a click.

Features: user and video ids, the tab, the user profile (activity, counts and their ranges,
``onehot_feat0..17``), ``author_id``, video type, upload type, visibility, music type and size,
and the video duration; never the post-impression signals (play and stay times, comments,
forwards, profile visits). Split by date: train 2022-04-08…04-21, validation 04-22…04-30, test
05-01…05-08.

``root`` may also hold one pre-joined file, ``kuairand_sample.csv`` (the Scenario-Wise-Rec
fixture: no date, and only ``is_click`` among the labels); it is split 80/10/10 with the seed.
With ``root=None`` the archive is downloaded from ``base_url`` and unpacked in the cache; it is
verified against ``sha256`` (``{"KuaiRand-Pure.tar.gz": <sha256 of the .tar>}``), which you must
give: no digest of the official archive could be pinned from here.

Example:
    >>> [t.name for t in kuairand_tasks()]
    ['is_click', 'is_like', 'is_follow', 'long_view', 'play_time']
    >>> play = kuairand_tasks(["play_time"])[0]
    >>> play.label, play.label_transform, play.mask.column
    ('play_time_ms', 'log1p', 'is_click')
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from pydantic import Field

from mtlkit.data.datasets import DatasetSplits, check_binary, read_csv, source_files
from mtlkit.data.datasets.registry import DATASETS, BuiltinDataset, DatasetOptions
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.data.split import seeded_split
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import Task, TaskKind, TaskMask

BASE_URL = "https://zenodo.org/records/10439422/files/"
VERSIONS = {"pure": "Pure", "1k": "1K"}
TASKS = ("is_click", "is_like", "is_follow", "long_view", "play_time")
BINARY = ("is_click", "is_like", "is_follow", "long_view")
USER_CATEGORICAL = [
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author", "follow_user_num_range",
    "fans_user_num_range", "friend_user_num_range", "register_days_range", *[f"onehot_feat{i}" for i in range(18)],
]
VIDEO_CATEGORICAL = ["author_id", "video_type", "upload_type", "visible_status", "music_type"]
CATEGORICAL = ["user_id", "video_id", "tab", *USER_CATEGORICAL, *VIDEO_CATEGORICAL]
# Counts and durations are heavy-tailed: log1p before standardising.
NUMERIC: dict[str, Literal["standard", "log1p", "none"]] = {
           "follow_user_num": "log1p", "fans_user_num": "log1p", "friend_user_num": "log1p", "register_days": "log1p",
           "duration_ms": "log1p", "server_width": "standard", "server_height": "standard"}
VIDEO_COLUMNS = ["video_id", *VIDEO_CATEGORICAL, "server_width", "server_height"]
JOINED = "kuairand_sample.csv"
TRAIN_END, VALIDATION_END = 20220421, 20220430  # last dates (yyyymmdd) of train and validation
LONG_VIEW_MS = 18_000
SPLIT_SEED = 2022


def kuairand_tasks(names: Sequence[str] = TASKS) -> list[Task]:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"kuairand has no task {unknown[0]!r} (tasks: {', '.join(TASKS)})")
    tasks = []
    for name in names:
        if name == "play_time":
            tasks.append(Task(name="play_time", kind=TaskKind.REGRESSION, label="play_time_ms", label_transform="log1p", mask=TaskMask(column="is_click")))
        else:
            tasks.append(Task(name=name, kind=TaskKind.BINARY))
    return tasks


def kuairand_schema(columns: Sequence[str] | None = None) -> SchemaSpec:
    """The feature spec, restricted to ``columns`` when given (a file may lack some features)."""
    present = set(columns) if columns is not None else None
    def keep(name: str) -> bool:
        return present is None or name in present

    return SchemaSpec(
        categorical=[CategoricalFeature(name=c) for c in CATEGORICAL if keep(c)],
        numeric=[NumericFeature(name=c, transform=t) for c, t in NUMERIC.items() if keep(c)],
    )


def with_long_view(table: pa.Table) -> pa.Table:
    """Add ``long_view`` from play and video durations when the table lacks it (KuaiRand's rule)."""
    if "long_view" in table.column_names:
        return table
    play = table.column("play_time_ms").to_numpy().astype(np.float64)
    duration = table.column("duration_ms").to_numpy().astype(np.float64)
    long_view = np.where(duration <= LONG_VIEW_MS, play >= duration, play >= LONG_VIEW_MS)
    return table.append_column("long_view", pa.array(long_view.astype(np.int8)))


def _left_join(table: pa.Table, other: pa.Table, key: str) -> pa.Table:
    # Arrow's hash join does not keep row order: carry the row number and sort on it afterwards.
    indexed = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    return indexed.join(other, keys=key, join_type="left outer").sort_by("__row").drop_columns(["__row"])


def _data_dir(root: Path, version: str) -> Path | None:
    first_log = f"log_standard_4_08_to_4_21_{version}.csv"
    for folder in (root, root / "data", root / f"KuaiRand-{VERSIONS[version]}" / "data"):
        if (folder / first_log).is_file():
            return folder
    return None


def _header(path: Path) -> list[str]:
    try:
        return list(pacsv.open_csv(path).schema.names)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: cannot be read as CSV: {str(error).strip().splitlines()[0]}") from None


def _read_official(folder: Path, version: str, tasks: Sequence[str]) -> pa.Table:
    names = [f"log_standard_4_08_to_4_21_{version}.csv", f"log_standard_4_22_to_5_08_{version}.csv"]
    paths = source_files("kuairand", folder, [*names, f"user_features_{version}.csv", f"video_features_basic_{version}.csv"])
    logs = [_checked(read_csv(paths[n], ["date", *_required(tasks)]), paths[n], tasks) for n in names]
    if logs[0].schema.names != logs[1].schema.names:
        raise DataError(f"{paths[names[1]]}: columns differ from {paths[names[0]].name}")
    table = pa.concat_tables(logs, promote_options="permissive")
    users = read_csv(paths[f"user_features_{version}.csv"], ["user_id"])
    videos = read_csv(paths[f"video_features_basic_{version}.csv"], ["video_id"])
    videos = videos.select([c for c in VIDEO_COLUMNS if c in videos.column_names])
    return _left_join(_left_join(table, users, "user_id"), videos, "video_id")


def _binary_labels(tasks: Sequence[str]) -> list[str]:
    # play_time needs is_click for its mask.
    return [t for t in BINARY if t in tasks or (t == "is_click" and "play_time" in tasks)]


def _required(tasks: Sequence[str]) -> list[str]:
    # long_view may be missing: it is derived from play_time_ms and duration_ms.
    return ["user_id", "video_id", "play_time_ms", "duration_ms", *(c for c in _binary_labels(tasks) if c != "long_view")]


def _checked(table: pa.Table, path: Path, tasks: Sequence[str]) -> pa.Table:
    return check_binary(with_long_view(table), _binary_labels(tasks), path)


def _unpack(archive: Path, version: str) -> Path:
    """The folder the archive unpacks into, unpacking it first (atomically) when needed."""
    target = archive.parent / f"KuaiRand-{VERSIONS[version]}-files"
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                # Refuses absolute paths, links out of the folder and device files.
                tar.extractall(partial, filter="data")
            else:  # Python < 3.10.12 has no extraction filters
                tar.extractall(partial)
    except (tarfile.TarError, OSError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"{archive}: cannot be unpacked: {error}") from None
    os.replace(partial, target)
    return target


def load_kuairand(
    root: str | Path | None = None,
    version: str = "pure",
    tasks: Sequence[str] | None = None,
    seed: int = SPLIT_SEED,
    base_url: str | None = BASE_URL,
    sha256: Mapping[str, str] | None = None,
) -> DatasetSplits:
    """Train / validation / test, tasks and features (see the module docstring).

    ``tasks``: names among :data:`TASKS`; None takes those the files have labels for.
    """
    version = str(version).lower()
    if version not in VERSIONS:
        raise ConfigError(f"kuairand version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if root is None:
        archive = f"KuaiRand-{VERSIONS[version]}.tar.gz"
        path = source_files("kuairand", None, [archive], base_url=base_url, sha256=sha256)[archive]
        root = _unpack(path, version)
    root = Path(root)
    folder = _data_dir(root, version) if root.is_dir() else None
    joined = root / JOINED
    if folder is None and not joined.is_file():
        raise DataError(f"{root / f'log_standard_4_08_to_4_21_{version}.csv'}: no such file "
                        f"(kuairand root must hold the KuaiRand-{VERSIONS[version]} data files or {JOINED})")
    header = _header(folder / f"log_standard_4_08_to_4_21_{version}.csv" if folder is not None else joined)
    names = list(tasks) if tasks is not None else [t for t in TASKS if t in header or t in ("long_view", "play_time")]
    task_list = kuairand_tasks(names)
    if folder is not None:
        table = _read_official(folder, version, names)
        dates = table.column("date").to_numpy()
        parts = {"train": dates <= TRAIN_END, "validation": (dates > TRAIN_END) & (dates <= VALIDATION_END), "test": dates > VALIDATION_END}
        splits = {name: table.filter(pa.array(mask)) for name, mask in parts.items()}
    else:
        table = _checked(read_csv(joined, _required(names)), joined, names)
        splits = seeded_split(table, {"validation": 0.1, "test": 0.1}, seed=seed)
    for name, part in splits.items():
        if part.num_rows == 0:
            hint = " (the logs' dates must cover 2022-04-08 to 2022-05-08)" if folder is not None else ""
            raise DataError(f"{root}: the {name} split is empty{hint}")
    schema = kuairand_schema(table.column_names)
    return DatasetSplits(splits["train"], splits["validation"], splits["test"], task_list, schema)


class KuaiRandOptions(DatasetOptions):
    root: Path | None = None
    version: str = "pure"
    tasks: list[str] | None = None
    seed: int = Field(default=SPLIT_SEED, ge=0)
    base_url: str | None = BASE_URL
    sha256: dict[str, str] | None = None


DATASETS.register("kuairand")(BuiltinDataset(KuaiRandOptions, lambda o: load_kuairand(**o.model_dump())))
