"""Doctor check: a distribution target (a regression label) computed with labels it must not see.

A "user's click rate per category" label computed by hand over the whole log leaks the future and
the validation/test labels into training. The check compares every regression task's label with
the per-group mean of every binary task's label, grouped by each categorical feature and each
pair of them (up to :data:`MAX_PAIR_FEATURES` features), computed

- over **all splits together**: the label then carries validation/test (and later) labels;
- over the training split **including the row itself**: the label then carries its own row's
  behaviour (target leakage in the classic sense).

A match (|difference| ≤ 1e-4 on every training row) is a WARNING naming the task, the behaviour
and the group, with the fix: ``data.derived_targets`` computes the same statistic from strictly
earlier training rows (``time``) or leave-one-out on the training split (``training_only``).

Example:
    >>> import pyarrow as pa
    >>> from mtlkit.data.schema import CategoricalFeature, SchemaSpec
    >>> from mtlkit.doctor.frame import SplitTables
    >>> from mtlkit.tasks import Task
    >>> train = pa.table({"u": ["a", "a", "b", "b"], "click": [1, 0, 1, 1], "u_ctr": [0.5, 0.5, 1.0, 1.0]})
    >>> tasks = [Task(name="click", kind="binary"), Task(name="u_ctr", kind="regression")]
    >>> result = check_target_leakage(SplitTables({"train": train}), tasks, SchemaSpec(categorical=[CategoricalFeature(name="u")]))
    >>> print(result.findings[0].message)  # doctest: +ELLIPSIS
    train: task 'u_ctr': its label is the per-(u) mean of 'click' over the training split including each row's own label...
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlkit.data.schema import SchemaSpec
from mtlkit.doctor.findings import CheckResult, Finding, Severity
from mtlkit.doctor.frame import SplitTables
from mtlkit.tasks import Task, TaskKind

MAX_PAIR_FEATURES = 6
TOLERANCE = 1e-4


def _codes(data: SplitTables, splits: Sequence[str], columns: Sequence[str]) -> list[np.ndarray]:
    joined = []
    for split in splits:
        parts = [pc.fill_null(data.strings(split, c), "\x00") for c in columns]
        joined.append(pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0])
    chunks = [c for j in joined for c in (j.chunks if isinstance(j, pa.ChunkedArray) else [j])]
    encoded = pc.dictionary_encode(pa.chunked_array(chunks, type=pa.string())).combine_chunks()
    flat = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    sizes = np.cumsum([0, *(data.rows(s) for s in splits)])
    return [flat[a:b] for a, b in zip(sizes[:-1], sizes[1:])]


def check_target_leakage(data: SplitTables, tasks: Sequence[Task], features: SchemaSpec) -> CheckResult:
    findings: list[Finding] = []
    stats: dict[str, Any] = {}
    regressions = [t for t in tasks if t.kind is TaskKind.REGRESSION]
    behaviours = [t for t in tasks if t.kind is TaskKind.BINARY]
    categorical = [f.name for f in features.categorical]
    groups = [[c] for c in categorical]
    if len(categorical) <= MAX_PAIR_FEATURES:
        groups += [list(p) for p in itertools.combinations(categorical, 2)]
    splits = [s for s in data.splits if all(t.label in data.tables[s].column_names for t in behaviours)]
    if not regressions or not behaviours or not groups or "train" not in splits:
        return CheckResult(findings, stats)
    cache: dict[tuple[str, ...], list[np.ndarray]] = {}  # group codes, encoded once for all targets
    for target in regressions:
        label = data.floats("train", target.label or target.name)
        if label is None or not np.isfinite(label).all():
            continue
        found = False
        for group in groups:
            codes = cache.get(tuple(group))
            if codes is None:
                singles = [cache.get((c,)) or cache.setdefault((c,), _codes(data, splits, [c])) for c in group]
                if len(singles) == 1:
                    codes = singles[0]
                else:  # a pair: combine the two columns' integer codes, no string joins
                    width = int(max(c.max(initial=-1) for c in singles[1])) + 1
                    combined = np.concatenate([a * width + b for a, b in zip(*singles)])
                    rows = len(combined)
                    # small products index bincount directly; large ones (user × item) are compacted
                    flat = combined if int(combined.max(initial=0)) < 4 * rows else np.unique(combined, return_inverse=True)[1].reshape(-1)
                    sizes = np.cumsum([0, *(len(c) for c in singles[0])])
                    codes = [flat[a:b] for a, b in zip(sizes[:-1], sizes[1:])]
                cache[tuple(group)] = codes
            size = int(max(c.max(initial=-1) for c in codes)) + 1
            # a per-group mean is constant within the group: skip groups where the label is not
            counts = np.maximum(np.bincount(codes[0], minlength=size), 1)
            centred = label - (np.bincount(codes[0], weights=label, minlength=size) / counts)[codes[0]]
            if np.abs(centred).max(initial=0.0) > TOLERANCE:
                continue
            for behaviour in behaviours:
                values = [data.floats(s, behaviour.label or behaviour.name) for s in splits]
                if any(v is None or not np.isfinite(v).all() for v in values):
                    continue
                means = {"the training split including each row's own label": (codes[0], values[0])}
                if len(splits) > 1:
                    means["all splits (validation/test and later rows included)"] = (np.concatenate(codes), np.concatenate(values))  # type: ignore[arg-type]
                for where, (keys, ys) in means.items():
                    mean = np.bincount(keys, weights=ys, minlength=size) / np.maximum(np.bincount(keys, minlength=size), 1)
                    if np.abs(mean[codes[0]] - label).max() <= TOLERANCE:
                        by = ", ".join(group)
                        findings.append(Finding(
                            "target_leakage", Severity.WARNING,
                            f"{data.source('train')}: task {target.name!r}: its label is the per-({by}) mean of {behaviour.label!r} over "
                            f"{where}: the target leaks labels it must not see; compute it with data.derived_targets "
                            "(time: strictly earlier training rows, or training_only: leave-one-out)",
                            "train", target.name, by))
                        stats[target.name] = {"behaviour": behaviour.label, "group": group, "over": where}
                        found = True
                        break
                if found:
                    break
            if found:
                break
    return CheckResult(findings, stats)


__all__ = ["check_target_leakage"]
