"""A tiny trained NLP run of four kinds for the serving and export tests: sst2 (classification,
single texts), stsb (regression on text pairs), ner (tagging) and qa (span QA), plus a masked-LM
auxiliary; a 2-layer, 32-wide BERT whose vocabulary comes from the shared files (offline)."""

from __future__ import annotations

from pathlib import Path

from conftest import SHARED_DATA
from tiny_bert import save_tiny_bert

NLP = SHARED_DATA / "nlp"
WNUT = ["O"] + [f"{p}-{t}" for t in ("corporation", "creative-work", "group", "location", "person", "product") for p in "BI"]


def train_tiny_nlp_run(directory: Path, pooling: str = "cls") -> Path:
    """Train the four-task run into ``directory / "run"`` (its tiny encoder in ``directory / "bert"``)."""
    from mtlkit.nlp.config import parse_nlp_config
    from mtlkit.nlp.run import train_nlp_run

    root = directory / "bert"
    save_tiny_bert(root, [(NLP / "sst2" / "train.tsv", 60), (NLP / "stsb" / "sts-train.tsv", 40),
                          (NLP / "wnut17" / "wnut17train.conll", 200), (NLP / "xquad_en" / "xquad.en.json", 40)], max_positions=512)
    rows = {"train": 16, "validation": 6}
    config = parse_nlp_config({
        "encoder": {"name": str(root), "pooling": pooling},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None},
        "tasks": [
            {"name": "sst2", "kind": "classification", "max_length": 96,
             "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                      "format": "glue_tsv", "max_rows": rows}},
            {"name": "stsb", "kind": "regression", "max_length": 48,
             "data": {"train": str(NLP / "stsb" / "sts-train.tsv"), "format": "sts", "max_rows": rows}},
            {"name": "ner", "kind": "tagging", "max_length": 48, "labels": WNUT,
             "data": {"train": str(NLP / "wnut17" / "wnut17train.conll"),
                      "validation": str(NLP / "wnut17" / "emerging.dev.conll"), "format": "conll", "max_rows": rows}},
            {"name": "qa", "kind": "span_qa", "max_length": 64, "doc_stride": 16, "max_question_length": 16,
             "data": {"train": str(NLP / "xquad_en" / "xquad.en.json"), "format": "squad", "max_rows": rows}},
            {"name": "lm", "kind": "mlm", "max_length": 24, "data": {"from_tasks": ["sst2"]}},
        ]})
    path = directory / "run"
    train_nlp_run(config, path)
    return path
