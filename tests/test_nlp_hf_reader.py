"""``format: hf``: NLP task data through Hugging Face ``datasets``, offline.

A save_to_disk folder (Dataset and DatasetDict with ``#split``), local files through builders
(csv, tsv, jsonl, parquet), a hub name not in the cache (one-line DataError, nothing downloaded),
column mapping to each kind's example (text, tagging with ClassLabel tags, SQuAD answers), and a
training run that reads its splits this way.
"""

from __future__ import annotations

import json

import datasets
import pytest

from mtlkit.errors import ConfigError, DataError
from mtlkit.nlp.examples import TextExample
from mtlkit.nlp.readers import read
from mtlkit.nlp.records import QAExample, TaggedSentence

from nlp_serving_runs import NLP
from tiny_bert import head_rows, save_tiny_bert


def _sst2(n: int, skip: int = 1) -> dict[str, list]:
    lines = head_rows(NLP / "sst2" / "train.tsv", n + skip)[skip:]
    rows = [line.rstrip("\n").split("\t") for line in lines]
    return {"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]}


FEATURES = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])})


def test_save_to_disk_folder_with_splits_and_class_names(tmp_path):
    folder = tmp_path / "sst2"
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict(_sst2(30), features=FEATURES),
                                 "validation": datasets.Dataset.from_dict(_sst2(5, 40), features=FEATURES)})
    data.save_to_disk(str(folder))
    train = read("hf", f"{folder}#train", {"columns": {"text": "sentence"}})
    assert len(train) == 30 and isinstance(train[0], TextExample)
    assert train[0].text == _sst2(1)["sentence"][0] and {e.label for e in train} <= {"negative", "positive"}
    assert len(read("hf", folder, {"columns": {"text": "sentence"}, "split": "validation"})) == 5
    with pytest.raises(DataError, match=r"holds splits \['train', 'validation'\]"):
        read("hf", folder, {"columns": {"text": "sentence"}})
    with pytest.raises(DataError, match="no split 'test'"):
        read("hf", f"{folder}#test", {"columns": {"text": "sentence"}})


def test_local_files_through_builders(tmp_path):
    rows = _sst2(6)
    csv_file, tsv_file, jsonl_file = tmp_path / "a.csv", tmp_path / "a.tsv", tmp_path / "a.jsonl"
    csv_file.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(rows["sentence"], rows["label"])))
    tsv_file.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(rows["sentence"], rows["label"])))
    jsonl_file.write_text("".join(json.dumps({"premise": "a b", "hypothesis": t, "label": y}) + "\n" for t, y in zip(rows["sentence"], rows["label"])))
    parquet_file = tmp_path / "a.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(parquet_file))
    assert [e.text for e in read("hf", csv_file)] == rows["sentence"]
    assert [e.label for e in read("hf", tsv_file, {"columns": {"text": "sentence"}})] == rows["label"]
    pairs = read("hf", jsonl_file, {"columns": {"text": "premise", "text_pair": "hypothesis"}})
    assert pairs[0].text == "a b" and pairs[0].text_pair == rows["sentence"][0]
    assert len(read("hf", parquet_file, {"columns": {"text": "sentence"}})) == 6
    with pytest.raises(DataError, match="no column 'sentence'"):
        read("hf", csv_file, {"columns": {"text": "sentence"}})
    with pytest.raises(DataError, match="no text column"):
        read("hf", parquet_file)
    with pytest.raises(ConfigError, match="unknown field 'txt'"):
        read("hf", csv_file, {"columns": {"txt": "text"}})
    (tmp_path / "a.xml").write_text("<a/>")
    with pytest.raises(DataError, match="not .xml"):
        read("hf", tmp_path / "a.xml")


def test_hub_name_not_in_cache_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(DataError) as error:
        read("hf", "hub:mtlkit-no-such-dataset/sst2#train")
    message = str(error.value)
    assert "not in the local cache" in message and "never downloads" in message and "\n" not in message
    with pytest.raises(DataError, match="no such file or folder"):
        read("hf", tmp_path / "missing")


def test_tagging_and_qa_examples(tmp_path):
    tags = datasets.ClassLabel(names=["O", "B-loc", "I-loc"])
    ner = datasets.Dataset.from_dict({"words": [["New", "York", "is", "big"]], "ner_tags": [[1, 2, 0, 0]]},
                                     features=datasets.Features({"words": datasets.Sequence(datasets.Value("string")),
                                                                 "ner_tags": datasets.Sequence(tags)}))
    ner.save_to_disk(str(tmp_path / "ner"))
    (sentence,) = read("hf", tmp_path / "ner", {"columns": {"tokens": "words", "tags": "ner_tags"}})
    assert isinstance(sentence, TaggedSentence) and sentence.tags == ("B-loc", "I-loc", "O", "O")
    qa = datasets.Dataset.from_dict({"id": ["q1"], "question": ["Who won?"], "context": ["The Panthers won."],
                                     "answers": [{"text": ["The Panthers"], "answer_start": [0]}]})
    qa.save_to_disk(str(tmp_path / "qa"))
    (example,) = read("hf", tmp_path / "qa")
    assert isinstance(example, QAExample) and example.id == "q1" and example.answers[0].text == "The Panthers"


def test_a_run_trains_on_hf_data(tmp_path):
    from mtlkit.nlp.config import parse_nlp_config
    from mtlkit.nlp.run import train_nlp_run

    folder = tmp_path / "sst2"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(_sst2(24), features=FEATURES),
                          "validation": datasets.Dataset.from_dict(_sst2(8, 40), features=FEATURES)}).save_to_disk(str(folder))
    save_tiny_bert(tmp_path / "bert", [(NLP / "sst2" / "train.tsv", 60)])
    config = parse_nlp_config({
        "encoder": {"name": str(tmp_path / "bert")},
        "train": {"epochs": 1, "batch_size": 8, "progress": False, "patience": None},
        "tasks": [{"name": "sst2", "kind": "classification", "max_length": 64,
                   "data": {"train": f"{folder}#train", "validation": f"{folder}#validation", "format": "hf",
                            "options": {"columns": {"text": "sentence"}}}}]})
    summary = train_nlp_run(config, tmp_path / "run")
    assert summary["tasks"] == ["sst2"]
    assert "labels:\n  - negative\n  - positive" in (tmp_path / "run" / "config.yaml").read_text()
