"""SciERC / DyGIE / PURE JSON lines: one document per line, entities and relations per sentence.

``{"doc_key", "sentences": [[word, …], …], "ner": [[[start, end, TYPE], …] per sentence],
"relations": [[[s1, e1, s2, e2, TYPE], …] per sentence]}`` with **document-level, inclusive**
word offsets (Luan et al. 2018; the files PURE and DyGIE++ read). They are turned into
sentence-level :class:`~mtlkit.nlp.records.IESentence` records; each keeps the document's other
words as ``left``/``right`` context, and each relation the types of its two arguments.
Coreference ``clusters`` are not read.

Example:
    >>> import json, tempfile, os
    >>> doc = {"doc_key": "d1", "sentences": [["We", "use", "CRFs", "."], ["CRFs", "tag", "text"]],
    ...        "ner": [[[2, 2, "Method"]], [[4, 4, "Method"], [6, 6, "Material"]]],
    ...        "relations": [[], [[4, 4, 6, 6, "USED-FOR"]]]}
    >>> path = os.path.join(tempfile.mkdtemp(), "mini.json")
    >>> _ = open(path, "w").write(json.dumps(doc) + "\\n")
    >>> second = read_scierc(path)[1]
    >>> second.entities[1], second.relations[0].subject, second.left
    (Entity(start=2, end=2, type='Material'), (0, 0), ('We', 'use', 'CRFs', '.'))
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mtlkit.errors import DataError
from mtlkit.nlp.records import Entity, IESentence, Relation


def _sentences(doc: Any, where: str) -> list[IESentence]:
    try:
        sentences, ner = doc["sentences"], doc["ner"]
        relations = doc.get("relations") or [[] for _ in sentences]
    except (KeyError, TypeError, AttributeError):
        raise DataError(f"{where}: expected an object with 'sentences' and 'ner'") from None
    if not (len(sentences) == len(ner) == len(relations)):
        raise DataError(f"{where}: {len(sentences)} sentences but {len(ner)} ner and {len(relations)} relation lists")
    words = [w for s in sentences for w in s]
    out, begin = [], 0
    for k, (tokens, entities, rels) in enumerate(zip(sentences, ner, relations)):
        end = begin + len(tokens)
        source = f"{where} sentence {k}"

        def local(start: Any, stop: Any, begin: int = begin, end: int = end, source: str = source) -> tuple[int, int]:
            # Document-level inclusive offsets → this sentence's word indices.
            if not (isinstance(start, int) and isinstance(stop, int) and begin <= start <= stop < end):
                raise DataError(f"{source}: span [{start}, {stop}] is not inside the sentence's words [{begin}, {end - 1}]")
            return (start - begin, stop - begin)

        try:
            ents = tuple(Entity(*local(s, e), str(t)) for s, e, t in entities)
            types = {e.span: e.type for e in ents}
            rs = []
            for s1, e1, s2, e2, t in rels:
                a, b = local(s1, e1), local(s2, e2)
                rs.append(Relation(a, b, str(t), types.get(a, ""), types.get(b, "")))
        except (TypeError, ValueError):
            raise DataError(f"{source}: expected ner items [start, end, TYPE] and relation items "
                            f"[s1, e1, s2, e2, TYPE]") from None
        out.append(IESentence(tuple(tokens), ents, tuple(rs), str(doc.get("doc_key", "")),
                              tuple(words[:begin]), tuple(words[end:]), source))
        begin = end
    return out


def read_scierc(path: str | Path) -> list[IESentence]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    sentences: list[IESentence] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not JSON ({e.msg} at column {e.colno})") from None
            sentences.extend(_sentences(doc, f"{path}:{number}"))
    if not sentences:
        raise DataError(f"{path}: no documents")
    return sentences


def entity_types(sentences: Iterable[IESentence]) -> list[str]:
    return sorted({e.type for s in sentences for e in s.entities})


def relation_types(sentences: Iterable[IESentence]) -> list[str]:
    return sorted({r.type for s in sentences for r in s.relations})


__all__ = ["entity_types", "read_scierc", "relation_types"]
