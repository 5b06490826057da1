"""SQuAD-format JSON (SQuAD v1.1, XQuAD, MLQA): ``data → paragraphs → {context, qas → answers}``.

One :class:`~mtlkit.nlp.records.QAExample` per question; ``paragraph`` names its context
(``data[i].paragraphs[j]``) so that splits hold out whole paragraphs, never questions of a
context seen in training. Answers must sit at ``answer_start`` in their context.

XQuAD ships one file, so :func:`split_paragraphs` makes a seeded train / validation / test split
of its paragraphs (default 80 / 10 / 10 %), and :func:`write_split` writes that split as three
SQuAD files a run config can name as ``train`` / ``validation`` / ``test`` (a row-level holdout
would put questions of one context on both sides).

Example:
    >>> import json, tempfile, os
    >>> qa = lambda i: {"id": f"q{i}", "question": "Who?", "answers": [{"answer_start": 0, "text": "Ada"}]}
    >>> data = {"data": [{"title": "T", "paragraphs": [{"context": "Ada wrote it.", "qas": [qa(i)]} for i in range(10)]}]}
    >>> path = os.path.join(tempfile.mkdtemp(), "mini.json")
    >>> _ = open(path, "w").write(json.dumps(data))
    >>> examples = read_squad(path)
    >>> examples[3].paragraph, examples[3].answers[0]
    ('data[0].paragraphs[3]', Answer(text='Ada', start=0))
    >>> {k: len(v) for k, v in split_paragraphs(examples, seed=0).items()}
    {'train': 8, 'validation': 1, 'test': 1}
    >>> files = write_split(path, os.path.dirname(path), seed=0)
    >>> [len(read_squad(files[k])) for k in ("train", "validation", "test")]
    [8, 1, 1]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtlkit.errors import DataError
from mtlkit.nlp.records import Answer, QAExample


def read_squad(path: str | Path) -> list[QAExample]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    examples: list[QAExample] = []
    seen: set[str] = set()
    where = f"{path}: data"
    try:
        for i, article in enumerate(data["data"]):
            for j, paragraph in enumerate(article["paragraphs"]):
                key = f"data[{i}].paragraphs[{j}]"
                context = paragraph["context"]
                for k, qa in enumerate(paragraph["qas"]):
                    where = f"{path}: {key}.qas[{k}]"
                    answers = tuple(Answer(str(a["text"]), int(a["answer_start"])) for a in qa.get("answers", []))
                    for a in answers:
                        if context[a.start: a.start + len(a.text)] != a.text:
                            raise DataError(f"{where}: answer {a.text!r} is not at character {a.start} of the context")
                    qid = str(qa["id"])
                    if qid in seen:
                        raise DataError(f"{where}: question id {qid!r} appears twice")
                    seen.add(qid)
                    examples.append(QAExample(qid, str(qa["question"]), context, answers, key, where))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: not SQuAD format (data → paragraphs → context, qas → id, question, answers): "
                        f"{type(e).__name__} {e}") from None
    if not examples:
        raise DataError(f"{path}: no questions")
    return examples


def split_paragraphs(examples: Sequence[QAExample], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                     seed: int = 0) -> dict[str, list[QAExample]]:
    """Seeded train / validation / test split by paragraph (all questions of a context stay together)."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    paragraphs = list(dict.fromkeys(ex.paragraph for ex in examples))
    order = np.random.default_rng(seed).permutation(len(paragraphs))
    n_train = round(fractions[0] * len(paragraphs))
    n_validation = round(fractions[1] * len(paragraphs))
    split_of = {}
    for rank, p in enumerate(order):
        split_of[paragraphs[p]] = "train" if rank < n_train else ("validation" if rank < n_train + n_validation else "test")
    out: dict[str, list[QAExample]] = {"train": [], "validation": [], "test": []}
    for ex in examples:
        out[split_of[ex.paragraph]].append(ex)
    return out


def write_split(path: str | Path, out_dir: str | Path, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> dict[str, Path]:
    """Write :func:`split_paragraphs` of ``path`` as ``<stem>.<split>.json`` SQuAD files in ``out_dir``."""
    path, out_dir = Path(path), Path(out_dir)
    examples = read_squad(path)  # validates the file
    data = json.loads(path.read_text(encoding="utf-8"))
    split_of = {ex.paragraph: name for name, part in split_paragraphs(examples, fractions, seed).items() for ex in part}
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("train", "validation", "test"):
        articles = []
        for i, article in enumerate(data["data"]):
            kept = [p for j, p in enumerate(article["paragraphs"]) if split_of.get(f"data[{i}].paragraphs[{j}]") == name]
            if kept:
                articles.append({**article, "paragraphs": kept})
        files[name] = out_dir / f"{path.stem}.{name}.json"
        files[name].write_text(json.dumps({"version": data.get("version", ""), "data": articles}), encoding="utf-8")
    return files


__all__ = ["read_squad", "split_paragraphs", "write_split"]
