"""Candidate-ranking TSV (``format: ranking_tsv``): one (query, candidate, label) per line, grouped by query.

A header names the columns; options ``group`` (default ``qid``), ``query``, ``candidate`` and
``label`` (1 = the relevant candidate, 0 = not) name them. Rows of a group need not be
adjacent; a labelled group must hold exactly one relevant candidate (MT-DNN's QNLI ranking
setting), else a :class:`~mtlkit.errors.DataError` names the group's first line.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "rank.tsv")
    >>> _ = open(path, "w").write("qid\\tquery\\tcandidate\\tlabel\\nq1\\tcapital?\\tParis.\\t1\\nq1\\tcapital?\\tRome.\\t0\\n")
    >>> example = read_ranking_tsv(path)[0]
    >>> example.candidates, example.label
    (('Paris.', 'Rome.'), 0)
"""

from __future__ import annotations

from pathlib import Path

from mtlkit.errors import DataError
from mtlkit.nlp.examples import RankingExample
from mtlkit.nlp.readers import READERS
from mtlkit.nlp.readers.glue import iter_tsv


@READERS.register("ranking_tsv")
def read_ranking_tsv(path: str | Path, group: str = "qid", query: str = "query", candidate: str = "candidate",
                     label: str | None = "label") -> list[RankingExample]:
    path = Path(path)
    groups: dict[str, dict] = {}
    for header, number, fields in iter_tsv(path):
        for name in (group, query, candidate, label):
            if name is not None and name not in header:
                raise DataError(f"{path}: no column {name!r}; columns: {', '.join(header)}")
        key = fields[header.index(group)]
        entry = groups.setdefault(key, {"query": fields[header.index(query)], "candidates": [], "relevant": [], "line": number})
        if label is not None and label in header:
            value = fields[header.index(label)].strip()
            if value not in ("0", "1"):
                raise DataError(f"{path}:{number}: label {value!r} must be 1 (relevant) or 0")
            if value == "1":
                entry["relevant"].append(len(entry["candidates"]))
        entry["candidates"].append(fields[header.index(candidate)])
    examples = []
    for key, entry in groups.items():
        relevant = entry["relevant"]
        if label is not None and len(relevant) != 1:
            raise DataError(f"{path}:{entry['line']}: query {key!r} has {len(relevant)} relevant candidates, expected exactly 1")
        examples.append(RankingExample(entry["query"], tuple(entry["candidates"]), relevant[0] if relevant else None,
                                       f"{path}:{entry['line']}"))
    return examples


__all__ = ["read_ranking_tsv"]
