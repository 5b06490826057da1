"""``format: hf`` — data read through Hugging Face ``datasets`` (extra ``mtlkit[nlp]``), offline.

A task's ``train`` / ``validation`` / ``test`` entry is one of:

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a local data file read through the ``datasets`` builder of its suffix (``.csv``, ``.tsv``
  (tab-separated csv), ``.json`` / ``.jsonl``, ``.parquet``, ``.txt``);
- ``hub:<name>`` or ``hub:<name>/<config>``: a hub dataset **already in the local cache**; nothing
  is downloaded (``HF_HUB_OFFLINE``), a dataset not in the cache is a one-line DataError.

A ``#<split>`` suffix picks the split of a DatasetDict or hub dataset (``data/sst2_hf#validation``,
``hub:glue/sst2#train``); without it, the ``split`` option, else the only split.

``columns`` maps the fields of the example to the dataset's columns (default: same names), and
the fields present decide the example: ``tokens`` + ``tags`` → :class:`TaggedSentence` (tagging),
``question`` + ``context`` (+ ``answers`` in SQuAD's ``{"text": [...], "answer_start": [...]}``)
→ :class:`QAExample` (span QA), ``query`` + ``candidates`` (+ ``label``) → :class:`RankingExample`,
else ``text`` (+ ``text_pair``, ``label``, ``domain``) → :class:`TextExample` (classification,
regression, domain). ``ClassLabel`` values become their names (GLUE's ``0/1`` → ``negative/positive``).

Example:
    >>> import datasets, tempfile, os
    >>> folder = os.path.join(tempfile.mkdtemp(), "sst2")
    >>> data = datasets.Dataset.from_dict({"sentence": ["a fine film", "dull"], "label": [1, 0]},
    ...     features=datasets.Features({"sentence": datasets.Value("string"),
    ...                                 "label": datasets.ClassLabel(names=["negative", "positive"])}))
    >>> data.save_to_disk(folder)  # doctest: +ELLIPSIS
    ...
    >>> rows = read_hf(folder, columns={"text": "sentence"})
    >>> rows[0].text, rows[0].label, rows[1].label
    ('a fine film', 'positive', 'negative')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError, DataError
from mtlkit.nlp.examples import RankingExample, TextExample
from mtlkit.nlp.records import Answer, QAExample, TaggedSentence

HUB = "hub:"
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
FIELDS = ("text", "text_pair", "label", "domain", "tokens", "tags", "id", "question", "context", "answers", "query", "candidates")


def _datasets() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the first import: datasets reads it then
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ConfigError("format hf needs the datasets package: pip install 'mtlkit[nlp]'") from None
    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()
    return datasets


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _pick_split(loaded: Any, split: str | None, where: str) -> Any:
    if not hasattr(loaded, "keys"):  # a Dataset
        return loaded
    splits = list(loaded.keys())
    if split is None:
        if len(splits) != 1:
            raise DataError(f"{where}: holds splits {splits}: pick one with a '#<split>' suffix or the split option")
        split = splits[0]
    if split not in splits:
        raise DataError(f"{where}: no split {split!r}; it has {splits}")
    return loaded[split]


def load(path: str | Path, split: str | None = None) -> Any:
    """The ``datasets.Dataset`` a data entry names (see the module docstring)."""
    datasets = _datasets()
    where = str(path)
    location, _, suffix_split = where.rpartition("#") if "#" in where else (where, "", None)
    split = suffix_split or split
    if HUB in location:
        name = location[location.index(HUB) + len(HUB):]
        repo, _, config = name.partition("/") if name.count("/") == 1 and not name.startswith(".") else (name, "", "")
        if "/" in config or not repo:
            raise DataError(f"{where}: a hub dataset is hub:<name> or hub:<name>/<config>")
        try:
            previous = datasets.config.HF_HUB_OFFLINE
            datasets.config.HF_HUB_OFFLINE = True
            try:
                loaded = datasets.load_dataset(repo, config or None)
            finally:
                datasets.config.HF_HUB_OFFLINE = previous
        except Exception as error:
            raise DataError(f"{where}: hub dataset {name!r} is not in the local cache (mtlkit never downloads; "
                            f"save it with save_to_disk and point at the folder): {_first_line(error)}") from None
        return _pick_split(loaded, split, where)
    file = Path(location)
    if file.is_dir():
        try:
            loaded = datasets.load_from_disk(str(file))
        except Exception as error:
            raise DataError(f"{file}: not a folder written by save_to_disk ({_first_line(error)})") from None
        return _pick_split(loaded, split, where)
    if not file.is_file():
        raise DataError(f"{file}: no such file or folder (format hf reads a save_to_disk folder, a data file or hub:<name>)")
    builder = BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise DataError(f"{file}: format hf reads {', '.join(BUILDERS)} files through datasets builders, not {file.suffix or 'this file'}")
    extra = {"delimiter": "\t"} if file.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train", **extra)
    except Exception as error:
        raise DataError(f"{file}: the datasets {builder!r} builder cannot read it ({_first_line(error)})") from None


def _names(dataset: Any, column: str) -> Any:
    """A function turning a column's values into ClassLabel names (identity for other features)."""
    feature = dataset.features.get(column)
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
    for candidate, nested in ((feature, False), (inner, True)):
        names = getattr(candidate, "names", None)
        if names:
            if nested:
                return lambda values: None if values is None else [names[v] if isinstance(v, int) and v >= 0 else v for v in values]
            return lambda value: names[value] if isinstance(value, int) and value >= 0 else (None if value == -1 else value)
    return lambda value: value


def read_hf(path: str | Path, columns: dict[str, str] | None = None, split: str | None = None) -> list[Any]:
    """Examples of one data entry; ``columns``: example field → dataset column (see the module docstring)."""
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise ConfigError(f"options.columns: unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    dataset = load(path, split)
    available = set(dataset.column_names)
    for field, column in mapping.items():
        if column not in available:
            raise DataError(f"{path}: options.columns.{field}: no column {column!r}; columns are {sorted(available)}")
    present = {f: mapping.get(f, f) for f in FIELDS if mapping.get(f, f) in available}
    convert = {f: _names(dataset, c) for f, c in present.items()}
    rows = dataset.select_columns(sorted(set(present.values()))).to_list()

    def get(row: dict[str, Any], field: str, default: Any = None) -> Any:
        return convert[field](row[present[field]]) if field in present else default

    where = str(path)
    if {"tokens", "tags"} <= set(present):
        return [TaggedSentence(tuple(get(r, "tokens")), tuple(str(t) for t in get(r, "tags")), f"{where}:{i}") for i, r in enumerate(rows)]
    if {"question", "context"} <= set(present):
        out = []
        for i, r in enumerate(rows):
            answers = get(r, "answers") or {"text": [], "answer_start": []}
            found = tuple(Answer(t, int(s)) for t, s in zip(answers.get("text", []), answers.get("answer_start", [])))
            out.append(QAExample(str(get(r, "id", i)), get(r, "question"), get(r, "context"), found, source=f"{where}:{i}"))
        return out
    if {"query", "candidates"} <= set(present):
        return [RankingExample(get(r, "query"), tuple(get(r, "candidates")), get(r, "label"), f"{where}:{i}") for i, r in enumerate(rows)]
    if "text" not in present:
        raise DataError(f"{path}: no text column: map one with options.columns (e.g. {{text: sentence}}); columns are {sorted(available)}")
    return [TextExample(get(r, "text"), get(r, "text_pair"), get(r, "label"), get(r, "domain"), f"{where}:{i}") for i, r in enumerate(rows)]


read_hf.__dict__["reads_any_path"] = True  # a function attribute, which mypy cannot type: folders and hub: names, not only files

__all__ = ["load", "read_hf"]
