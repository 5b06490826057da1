"""The data doctor's checks: one function per check, each returning findings and statistics.

Every check works on whole columns (numpy / pyarrow compute), so a few million rows take seconds.
The severity of each finding follows the policy in :mod:`mtlkit.doctor.findings`.

Example:
    >>> import pyarrow as pa
    >>> from mtlkit.tasks import Task, TaskMask
    >>> data = SplitTables({"train": pa.table({"click": [0, 1, 0, 1], "buy": [0, 1, 1, 0]})}, {"train": "t.csv"})
    >>> buy = Task(name="buy", kind="binary", mask=TaskMask(column="click"))
    >>> print(check_consistency(data, [buy]).findings[0].message)  # doctest: +NORMALIZE_WHITESPACE
    t.csv: task 'buy': 1 of 2 rows outside its mask (50.0%) have buy != 0 where click != 1, first at data row 3;
    the mask keeps them out of the task's loss and metrics
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlkit.data.schema import SchemaSpec
from mtlkit.doctor.findings import CheckResult, Finding, Severity, Thresholds
from mtlkit.doctor.frame import SplitTables, first_row, row_hashes, skipped_hash_columns
from mtlkit.errors import DataError
from mtlkit.metrics.functions import auc, average_ranks
from mtlkit.tasks import Task, TaskKind

ERROR, WARNING = Severity.ERROR, Severity.WARNING


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{('es' if noun.endswith('s') else 's') * (n != 1)}"


def _categoricals(features: SchemaSpec) -> list[str]:
    # Bias features (position, device) are categoricals with their own vocabulary.
    return [f.name for f in [*features.categorical, *getattr(features, "bias", [])]]


def _numerics(features: SchemaSpec) -> list[str]:
    return [f.name for f in features.numeric]


def invalid_labels(task: Task, values: np.ndarray) -> np.ndarray:
    """Rows :meth:`Task.label_problem` rejects (it names only the first; we also count them)."""
    return task.invalid_labels(values)[0]


def in_space(data: SplitTables, split: str, task: Task) -> np.ndarray | None:
    """Rows inside the task's mask (all rows without one); ``None`` when the mask column is not numeric."""
    if task.mask is None:
        return np.ones(data.rows(split), dtype=bool)
    values = data.floats(split, task.mask.column)
    return None if values is None else values == task.mask.equals  # NaN: outside, as in encoding


def counted_rows(data: SplitTables, split: str, task: Task) -> tuple[np.ndarray, np.ndarray] | None:
    """(label values, rows that count: label present and valid, inside the mask), or ``None``."""
    values = data.floats(split, task.label)  # type: ignore[arg-type]
    space = in_space(data, split, task)
    if values is None or space is None:
        return None
    return values, space & ~np.isnan(values) & ~invalid_labels(task, values)


# -- labels -----------------------------------------------------------------------------------------


def check_label_values(data: SplitTables, tasks: Sequence[Task]) -> CheckResult:
    """Labels outside their valid values; non-numeric labels, masks and weights; NaN/inf/negative weights."""
    result = CheckResult(stats={})
    for split in data.splits:
        source, seen = data.source(split), set()
        for task in tasks:
            # the value checks of labels, sample weights and masks (a positive weight is read as a weight too)
            for role, column in task.columns().items():
                role = "weight" if role == "positive_weight" else role
                if role == "group" or (role != "label" and (role, column) in seen):
                    continue
                seen.add((role, column))
                values = data.floats(split, column)
                where = f"{source}: {role} column {column!r} of task {task.name!r}"
                if values is None:
                    kind = data.column_type(split, column)
                    result.findings.append(Finding("label_values", ERROR, f"{where} must be numeric, found {kind}",
                                                   split, task.name, column))
                    continue
                if role == "label":
                    bad = invalid_labels(task, values)
                    problem = task.label_problem(values) if bad.any() else None
                    detail = problem
                elif role == "weight":
                    bad = ~np.isfinite(values) | (values < 0)
                    row = first_row(bad)
                    detail = f"data row {row}: value {float(values[row - 1])!r} (expected a finite number ≥ 0)"
                else:
                    continue
                count = int(bad.sum())
                result.stats.setdefault(split, {})[f"{role}:{column}"] = count
                if count:
                    share = count / len(values)
                    result.findings.append(Finding("label_values", ERROR, f"{where}, {detail}; {_count(count, 'invalid row')} ({_pct(share)})",
                                                   split, task.name, column, count, share))
    return result


def check_label_rates(data: SplitTables, tasks: Sequence[Task], thresholds: Thresholds) -> CheckResult:
    """Per split and task: labelled rows, positive rate / mean / class shares; extreme rates flagged."""
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    findings: list[Finding] = []
    for split in data.splits:
        source = data.source(split)
        for task in tasks:
            rows = counted_rows(data, split, task)
            if rows is None:
                continue  # reported by check_label_values
            values, counted = rows
            y = values[counted]
            entry: dict[str, Any] = {"rows": data.rows(split), "labelled": int(counted.sum())}
            stats.setdefault(split, {})[task.name] = entry
            where = f"{source}: task {task.name!r}"
            severe = ERROR if split == "train" else WARNING  # train cannot learn; others cannot be scored
            if not len(y):
                findings.append(Finding("label_rates", severe, f"{where}: no labelled row inside its task space", split, task.name, task.label, 0))
                continue
            if task.kind is TaskKind.BINARY:
                positives = int(y.sum())
                negatives = len(y) - positives
                entry.update(positives=positives, rate=positives / len(y))
                if positives == 0 or negatives == 0:
                    missing = "positive" if positives == 0 else "negative"
                    findings.append(Finding("label_rates", severe, f"{where}: no {missing} label among {len(y)} labelled rows; AUC is undefined",
                                            split, task.name, task.label, len(y), entry["rate"]))
                elif min(positives, negatives) < thresholds.min_class_rows:
                    few = "positives" if positives < negatives else "negatives"
                    findings.append(Finding("label_rates", WARNING,
                                            f"{where}: only {min(positives, negatives)} {few} among {len(y)} labelled rows "
                                            f"(rate {_pct(entry['rate'])}); its metrics are noise",
                                            split, task.name, task.label, min(positives, negatives), entry["rate"]))
            elif task.kind is TaskKind.REGRESSION:
                entry.update(mean=float(y.mean()), std=float(y.std()), nonzero_share=float((y != 0).mean()))
                if split == "train" and entry["std"] == 0:
                    findings.append(Finding("label_rates", WARNING, f"{where}: every labelled training row has the value {float(y[0])!r}",
                                            split, task.name, task.label, len(y)))
            else:
                shares = np.bincount(y.astype(np.int64), minlength=task.n_classes or 0) / len(y)
                entry["class_shares"] = shares.tolist()
                absent = np.flatnonzero(shares == 0)
                if split == "train" and len(absent):
                    message = f"{where}: class {int(absent[0])} never occurs in training ({_count(len(absent), 'class')} absent)"
                    findings.append(Finding("label_rates", WARNING, message,
                                            split, task.name, task.label, len(absent)))
    return CheckResult(findings, stats)


def check_label_correlation(data: SplitTables, tasks: Sequence[Task], thresholds: Thresholds) -> CheckResult:
    """Pearson correlation of the tasks' labels on train, over rows where both are present (masks ignored)."""
    usable = [t for t in tasks if t.kind is not TaskKind.MULTICLASS and data.floats("train", t.label) is not None]  # type: ignore[arg-type]
    n = len(usable)
    matrix: list[list[float | None]] = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
    findings = []
    for i in range(n):  # the labels of `usable` are numeric: floats() is not None
        a = cast(np.ndarray, data.floats("train", usable[i].label))  # type: ignore[arg-type]
        for j in range(i + 1, n):
            b = cast(np.ndarray, data.floats("train", usable[j].label))  # type: ignore[arg-type]
            both = np.isfinite(a) & np.isfinite(b)
            x, y = a[both], b[both]
            if len(x) < 2 or x.std() == 0 or y.std() == 0:
                continue
            r = float(np.corrcoef(x, y)[0, 1])
            matrix[i][j] = matrix[j][i] = r
            if abs(r) >= thresholds.identical_labels:
                findings.append(Finding("label_correlation", WARNING,
                                        f"{data.source('train')}: tasks {usable[i].name!r} and {usable[j].name!r} have (almost) identical labels "
                                        f"(correlation {r:.4f}); one of them adds nothing", "train", usable[j].name, value=r))
    return CheckResult(findings, {"split": "train", "tasks": [t.name for t in usable], "matrix": matrix})


def check_consistency(data: SplitTables, tasks: Sequence[Task]) -> CheckResult:
    """A label present and nonzero where the task's mask excludes the row (a conversion without a click)."""
    result = CheckResult(stats={})
    for split in data.splits:
        for task in tasks:
            if task.mask is None:
                continue
            values, space = data.floats(split, task.label), in_space(data, split, task)  # type: ignore[arg-type]
            if values is None or space is None:
                continue
            outside = ~space
            bad = outside & ~np.isnan(values) & (values != 0)
            count, n_out = int(bad.sum()), int(outside.sum())
            result.stats.setdefault(split, {})[task.name] = {"outside": n_out, "violations": count}
            if count:
                share = count / n_out
                result.findings.append(Finding(
                    "consistency", WARNING,
                    f"{data.source(split)}: task {task.name!r}: {count} of {n_out} rows outside its mask ({_pct(share)}) have "
                    f"{task.label} != 0 where {task.mask.column} != {task.mask.equals:g}, first at data row {first_row(bad)}; "
                    "the mask keeps them out of the task's loss and metrics",
                    split, task.name, task.label, count, share))
    return result


# -- features ---------------------------------------------------------------------------------------


def check_feature_values(data: SplitTables, features: SchemaSpec) -> CheckResult:
    """Null, NaN and ±inf per feature column and split; non-numeric numeric features."""
    result = CheckResult(stats={})
    for split in data.splits:
        source = data.source(split)
        for name in _categoricals(features):
            nulls = data.tables[split].column(name).null_count
            result.stats.setdefault(split, {})[name] = {"null": nulls}
        for name in _numerics(features):
            values = data.floats(split, name)
            if values is None:
                message = f"{source}: numeric feature {name!r} must be numeric, found {data.column_type(split, name)}"
                result.findings.append(Finding("feature_values", ERROR, message, split, column=name))
                continue
            nulls = data.tables[split].column(name).null_count
            nan, posinf, neginf = np.isnan(values), values == np.inf, values == -np.inf
            result.stats.setdefault(split, {})[name] = {"null": nulls, "nan": int(nan.sum()) - nulls,
                                                         "posinf": int(posinf.sum()), "neginf": int(neginf.sum())}
            n = len(values)
            if split == "train" and not np.isfinite(values).any():
                result.findings.append(Finding("feature_values", ERROR, f"{source}: numeric feature {name!r} has no finite value",
                                               split, column=name, count=n, share=1.0))
                continue
            train_values = data.floats("train", name) if split != "train" else None  # None too when train's column is not numeric
            train_missing = train_values is not None and not (~np.isfinite(train_values)).any()
            note = "; training had none, so the model has no missing-value indicator for it" if train_missing else ""
            if nan.any():
                count = int(nan.sum())
                result.findings.append(Finding("feature_values", WARNING,
                                               f"{source}: numeric feature {name!r}: {_count(count, 'missing (null/NaN) value')} ({_pct(count / n)}), "
                                               f"first at data row {first_row(nan)}; "
                                               f"filled with the training mean{note}", split, column=name, count=count, share=count / n))
            infinite = posinf | neginf
            if infinite.any():
                count = int(infinite.sum())
                result.findings.append(Finding("feature_values", WARNING,
                                               f"{source}: numeric feature {name!r}: {_count(count, 'infinite value')} ({_pct(count / n)}), "
                                               f"first at data row {first_row(infinite)}; treated as missing (a division by zero upstream?){note}",
                                               split, column=name, count=count, share=count / n))
    return result


def _leak(feature: str, task: Task, kind: str, score: str) -> str:
    return f"{kind} feature {feature!r} alone predicts the label of task {task.name!r} ({score}); a label leaking into a feature?"


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = average_ranks(x[order])
    return ranks


def check_leakage(data: SplitTables, tasks: Sequence[Task], features: SchemaSpec, thresholds: Thresholds) -> CheckResult:
    """A single feature that predicts a label almost perfectly.

    Binary tasks: the AUC of each numeric feature on train (missing values ranked last), and of
    each categorical feature's per-category training label rate applied to validation (unseen
    categories get the overall rate). Regression tasks: |Spearman| of each numeric feature on train.
    """
    high = thresholds.leakage_auc
    stats: dict[str, dict[str, Any]] = {}
    findings: list[Finding] = []
    rng = np.random.default_rng(0)
    has_validation = "validation" in data.tables
    category_codes = {name: _category_codes(data, name) for name in _categoricals(features)} if has_validation else {}
    for task in tasks:
        if task.kind is TaskKind.MULTICLASS:
            continue
        rows = counted_rows(data, "train", task)
        if rows is None:
            continue
        values, counted = rows
        index = np.flatnonzero(counted)
        if len(index) > thresholds.leakage_rows:
            index = np.sort(rng.choice(index, thresholds.leakage_rows, replace=False))
        y = values[index]
        scores: dict[str, float] = {}
        stats[task.name] = {"metric": "spearman" if task.kind is TaskKind.REGRESSION else "auc", "scores": scores}
        if task.kind is TaskKind.REGRESSION:
            for name in _numerics(features):
                x = data.floats("train", name)
                if x is None:
                    continue
                keep = np.isfinite(x[index]) & np.isfinite(y)
                if keep.sum() < 2 * thresholds.min_class_rows or x[index][keep].std() == 0 or y[keep].std() == 0:
                    continue
                rho = float(np.corrcoef(_ranks(x[index][keep]), _ranks(y[keep]))[0, 1])
                scores[name] = rho
                if abs(rho) >= thresholds.leakage_correlation:
                    findings.append(Finding("leakage", ERROR, f"{data.source('train')}: {_leak(name, task, 'numeric', f'Spearman {rho:.4f}')}",
                                            "train", task.name, name, value=rho))
            continue
        positives = int(y.sum())
        if min(positives, len(y) - positives) < thresholds.min_class_rows:
            continue  # too few of one class for an AUC to mean anything (check_label_rates says so)
        for name in _numerics(features):
            x = data.floats("train", name)
            if x is None:
                continue
            a = auc(np.nan_to_num(x[index], nan=np.inf), y)
            scores[name] = a
            if a >= high or a <= 1 - high:
                findings.append(Finding("leakage", ERROR, f"{data.source('train')}: {_leak(name, task, 'numeric', f'AUC {a:.4f}')}",
                                        "train", task.name, name, value=a))
        if has_validation:
            validation_rows = counted_rows(data, "validation", task)
            if validation_rows is None:
                continue
            v_values, v_counted = validation_rows
            v_y = v_values[v_counted]
            v_positives = int(v_y.sum())
            if min(v_positives, len(v_y) - v_positives) < thresholds.min_class_rows:
                continue
            prior = positives / len(y)
            for name, (train_codes, validation_codes, size) in category_codes.items():
                counts = np.bincount(train_codes[index], minlength=size)
                rate = np.bincount(train_codes[index], weights=y, minlength=size) / np.maximum(counts, 1)
                rate = np.where(counts > 0, rate, prior)
                codes = validation_codes[v_counted]
                a = auc(np.where(codes >= 0, rate[np.maximum(codes, 0)], prior), v_y)
                scores[name] = a
                if a >= high or a <= 1 - high:
                    score = f"AUC {a:.4f} of its per-category training rate"
                    findings.append(Finding("leakage", ERROR, f"{data.source('validation')}: {_leak(name, task, 'categorical', score)}",
                                            "validation", task.name, name, value=a))
    return CheckResult(findings, stats)


def _category_codes(data: SplitTables, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Train codes, validation codes (−1: unseen) and the number of training categories (null is one)."""
    encoded = pc.dictionary_encode(data.strings("train", name), null_encoding="encode")
    train_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    found = pc.index_in(data.strings("validation", name), value_set=encoded.dictionary, skip_nulls=False)
    validation_codes = np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return train_codes, validation_codes, len(encoded.dictionary)


def check_unseen(data: SplitTables, features: SchemaSpec, thresholds: Thresholds) -> CheckResult:
    """Share of validation/test rows whose category never occurs in train (nulls not counted)."""
    result = CheckResult(stats={})
    for name in _categoricals(features):
        seen = pc.unique(data.strings("train", name).drop_null())
        for split in data.splits:
            if split == "train":
                continue
            strings = data.strings(split, name)
            unseen = pc.and_(pc.is_valid(strings), pc.invert(pc.is_in(strings, value_set=seen)))
            mask = np.asarray(unseen.to_numpy(zero_copy_only=False), dtype=bool)
            count, n = int(mask.sum()), len(mask)
            values = len(pc.unique(strings.filter(unseen))) if count else 0
            share = count / n
            result.stats.setdefault(split, {})[name] = {"unseen_rows": count, "share": share, "unseen_values": values}
            if share > thresholds.unseen_share:
                result.findings.append(Finding("unseen", WARNING,
                                               f"{data.source(split)}: categorical feature {name!r}: {count} rows ({_pct(share)}) hold {values} values "
                                               f"never seen in training, first at data row {first_row(mask)}; they all share the out-of-vocabulary embedding",
                                               split, column=name, count=count, share=share))
    return result


def check_duplicates(data: SplitTables, thresholds: Thresholds) -> CheckResult:
    """Exact duplicate rows within each split, and validation/test rows identical to a training row."""
    result = CheckResult(stats={})
    tables = data.tables
    skipped = {c for t in tables.values() for c in skipped_hash_columns(t)}
    common = [c for c in tables["train"].column_names if all(c in t.column_names for t in tables.values()) and c not in skipped]
    joint = row_hashes(tables, common)
    train_hashes = np.sort(joint["train"])  # membership by binary search: np.isin/np.unique hash, slower here
    for split, table in tables.items():
        own = [c for c in table.column_names if c not in skipped]
        hashes = joint[split] if own == common else row_hashes({split: table}, own)[split]
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        repeats = first[inverse.reshape(-1)] != np.arange(len(hashes))
        count, n = int(repeats.sum()), len(hashes)
        entry: dict[str, Any] = {"rows": n, "duplicates": count, "share": count / n}
        if skipped:
            entry["columns_ignored"] = sorted(skipped)
        if count / n >= thresholds.duplicate_share:
            row = first_row(repeats)
            original = int(first[inverse.reshape(-1)[row - 1]]) + 1
            message = f"{data.source(split)}: {count} exact duplicate rows ({_pct(count / n)}), e.g. data row {row} repeats data row {original}"
            result.findings.append(Finding("duplicates", WARNING, message, split, count=count, share=count / n))
        if split != "train":
            position = np.minimum(np.searchsorted(train_hashes, joint[split]), len(train_hashes) - 1)
            copies = train_hashes[position] == joint[split]
            entry["in_train"] = int(copies.sum())
            share = entry["in_train"] / n
            if share >= thresholds.duplicate_share:
                result.findings.append(Finding("duplicates", WARNING,
                                               f"{data.source(split)}: {entry['in_train']} rows ({_pct(share)}) are exact copies of training rows, "
                                               f"first at data row {first_row(copies)}; they inflate its metrics",
                                               split, count=entry["in_train"], share=share))
        result.stats[split] = entry
    return result


# -- time -------------------------------------------------------------------------------------------


def _time_array(data: SplitTables, split: str, column: str) -> pa.Array:
    if column not in data.tables[split].column_names:
        raise DataError(f"{data.source(split)}: missing column {column!r} (the --time-column)")
    array = data.tables[split].column(column).combine_chunks()
    kind = array.type
    if pa.types.is_integer(kind):
        return pc.cast(array, pa.int64())
    if pa.types.is_floating(kind):
        return pc.cast(array, pa.float64())
    if pa.types.is_temporal(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array  # ISO-8601 strings order like the times they spell
    raise DataError(f"{data.source(split)}: time column {column!r} has type {kind}; expected numbers, dates, timestamps or strings")


def check_time_overlap(data: SplitTables, column: str) -> CheckResult:
    """Overlap: the latest training time is after the earliest validation (or test) time."""
    result = CheckResult(stats={"column": column})
    arrays = {split: _time_array(data, split, column) for split in data.splits}
    kinds = {str(a.type) for a in arrays.values()}
    if kinds == {"int64", "double"}:  # int in one CSV, float in another: still comparable
        arrays = {split: pc.cast(a, pa.float64()) for split, a in arrays.items()}
        kinds = {"double"}
    if len(kinds) > 1:
        raise DataError(f"time column {column!r} has different types across splits ({', '.join(sorted(kinds))}); make them one type")
    bounds = {}
    for split, array in arrays.items():
        minmax = pc.min_max(array)
        bounds[split] = (minmax["min"], minmax["max"])
        result.stats[split] = {"min": str(minmax["min"].as_py()), "max": str(minmax["max"].as_py()), "null": array.null_count}
        if array.null_count:
            mask = np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            message = f"{data.source(split)}: time column {column!r}: {_count(array.null_count, 'row')} without a time, first at data row {first_row(mask)}"
            result.findings.append(Finding("time_overlap", WARNING, message,
                                           split, column=column, count=array.null_count, share=array.null_count / len(array)))
    pairs = [("train", s, ERROR) for s in ("validation", "test") if s in arrays]
    if "validation" in arrays and "test" in arrays:
        pairs.append(("validation", "test", WARNING))  # the test set is read once; still, later data should test
    for early, late, severity in pairs:
        latest = bounds[early][1]
        if not latest.is_valid or not bounds[late][0].is_valid:
            continue
        before = pc.fill_null(pc.less(arrays[late], latest), False)
        count = int(pc.sum(before).as_py() or 0)
        if count:
            share = count / len(arrays[late])
            mask = np.asarray(before.to_numpy(zero_copy_only=False), dtype=bool)
            result.findings.append(Finding("time_overlap", severity,
                                           f"{data.source(late)}: {count} rows ({_pct(share)}) are earlier than the last {early} row "
                                           f"({column} {bounds[late][0].as_py()} < {latest.as_py()}), first at data row {first_row(mask)}; "
                                           f"split by time so that {early} precedes {late}", late, column=column, count=count, share=share))
    return result
