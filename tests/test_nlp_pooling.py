"""``encoder.pooling: auto`` (the default) pools as the encoder was trained: mean for MiniLM and
sentence-transformers folders, the first token otherwise; the resolved value is what a run records."""

from __future__ import annotations

import json

import pytest
import torch

from mtlkit.nlp.config import parse_nlp_config
from mtlkit.nlp.encoder import EncoderSpec, trained_pooling
from mtlkit.nlp.kinds.classification import ClassificationTask
from mtlkit.nlp.model import NLPMultiTaskModel


def test_auto_is_mean_for_minilm_and_sentence_transformers_folders(tmp_path):
    assert EncoderSpec(name="minilm").resolved().pooling == "mean"
    assert EncoderSpec(name="minilm", pooling="cls").resolved().pooling == "cls"  # an explicit choice wins
    plain = tmp_path / "bert"
    plain.mkdir()
    assert trained_pooling(str(plain)) == "cls"
    st = tmp_path / "st"
    (st / "1_Pooling").mkdir(parents=True)
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    assert trained_pooling(str(st)) == "mean"
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert trained_pooling(str(st)) == "cls"
    (st / "1_Pooling" / "config.json").write_text("{not json")
    assert trained_pooling(str(st)) == "cls"


def test_a_run_config_records_the_resolved_pooling(tmp_path):
    from mtlkit.nlp.config import dump_nlp_config

    st = tmp_path / "st"
    (st / "1_Pooling").mkdir(parents=True)
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (tmp_path / "a.tsv").write_text("sentence\tlabel\na\t0\n")
    raw = {"encoder": {"name": "st"}, "tasks": [{"name": "t", "kind": "classification", "data": {"train": "a.tsv", "format": "glue_tsv"}}]}
    config = parse_nlp_config(raw)
    assert config.encoder.pooling == "auto"
    resolved = config.resolve_paths(tmp_path)
    assert resolved.encoder.pooling == "mean" and "pooling: mean" in dump_nlp_config(resolved)


def test_the_model_refuses_an_unresolved_pooling():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": 4})()
            self.embed = torch.nn.Embedding(10, 4)

        def forward(self, input_ids, attention_mask):
            return (self.embed(input_ids),)

    task = ClassificationTask(name="t", labels=["0", "1"])
    with pytest.raises(ValueError, match="resolve 'auto'"):
        NLPMultiTaskModel({"shared": Toy()}, [task], pooling="auto")
    model = NLPMultiTaskModel({"shared": Toy()}, [task], pooling="mean")
    ids = torch.tensor([[2, 5, 0]])
    _, pooled = model.encode("shared", {"input_ids": ids, "attention_mask": (ids > 0).long()})
    states = model.encoders["shared"].embed(ids)[0]
    assert torch.allclose(pooled[0], states[:2].mean(0))  # the padding position is left out
