"""Token corpus-frequency target (kind token_frequency): training split only, learnable, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import transformers  # noqa: F401  (the test extra installs it: a missing one fails, never skips)

from mtlkit.errors import ConfigError
from mtlkit.nlp.config import parse_nlp_config
from mtlkit.nlp.kinds.token_frequency import TokenFrequencyTask

from conftest import SHARED_DATA
from tiny_bert import save_tiny_bert

NLP = SHARED_DATA / "nlp"
SST2 = {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"), "format": "glue_tsv"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("freq_bert")
    torch.set_num_threads(1)
    save_tiny_bert(path, [(NLP / "sst2" / "train.tsv", 80), (NLP / "sst2" / "dev.tsv", 40), (NLP / "rte" / "train.tsv", 20)], dropout=0.0)
    return path


def _config(root, sst2=SST2, freq_data=None, train_rows=64, epochs=1):
    return parse_nlp_config({
        "seed": 0, "encoder": {"name": str(root)},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "progress": False, "patience": None, "monitor": "loss"},
        "tasks": [{"name": "sst2", "kind": "classification", "max_length": 32, "data": {**sst2, "max_rows": {"train": train_rows, "validation": 32}}},
                  {"name": "freq", "kind": "token_frequency", "max_length": 32, "data": freq_data or {"from_tasks": ["sst2"]}}]})


def test_the_table_is_a_standardised_smoothed_log_frequency():
    task = TokenFrequencyTask(name="freq", smoothing=0.5)
    counts = torch.tensor([0.0, 7.0, 3.0, 3.0, 1.0, 0.0])
    task.set_table(counts)
    raw = torch.log((counts + 0.5) / (counts.sum() + 0.5 * 6))
    seen = counts > 0
    mean = float((counts[seen] * task.table[seen]).sum() / counts[seen].sum())
    var = float((counts[seen] * (task.table[seen] - mean) ** 2).sum() / counts[seen].sum())
    assert mean == pytest.approx(0.0, abs=1e-5) and var == pytest.approx(1.0, abs=1e-4)  # over training occurrences
    assert task.table[1] > task.table[2] == task.table[3] > task.table[4] > task.table[0] == task.table[5]
    # an affine map of the smoothed log frequency: differences keep their ratios
    assert float((task.table[1] - task.table[4]) / (task.table[2] - task.table[4])) == pytest.approx(float((raw[1] - raw[4]) / (raw[2] - raw[4])), rel=1e-5)


def test_validation_and_test_text_never_change_the_table(root, tmp_path):
    from mtlkit.nlp.run import prepare

    base = prepare(_config(root))
    table = base.tasks[1].table
    # the source task gets another validation file and a test file: the derived task's training texts are the same 64 rows
    held_out = {**SST2, "validation": str(NLP / "sst2" / "train.tsv"), "test": str(NLP / "sst2" / "dev.tsv")}
    assert torch.equal(prepare(_config(root, held_out)).tasks[1].table, table)
    # the task's own files: another validation file (and more of its rows), the same training rows
    own = {"train": SST2["train"], "validation": SST2["validation"], "format": "glue_tsv", "max_rows": {"train": 64, "validation": 32}}
    own_other = {**own, "validation": str(NLP / "sst2" / "train.tsv"), "test": SST2["validation"], "max_rows": {"train": 64, "validation": 200}}
    assert torch.equal(prepare(_config(root, freq_data=own)).tasks[1].table, prepare(_config(root, freq_data=own_other)).tasks[1].table)
    assert not torch.equal(prepare(_config(root, train_rows=32)).tasks[1].table, table)  # training text does change it
    # validation targets are read from the training table: a token seen only in validation gets the unseen value
    validation = base.tables["validation"]["freq"]
    ids, target = validation.inputs["input_ids"], validation.targets["freq"]
    valid = ~torch.isnan(target)
    assert torch.equal(target[valid], table[ids[valid]])
    assert float(table.min()) in set(target[valid].tolist())  # some validation word pieces never occur in training


def test_a_run_learns_the_frequencies_better_than_the_best_constant(root, tmp_path):
    from mtlkit.nlp.run import prepare, train_nlp_run

    summary = train_nlp_run(_config(root, train_rows=256, epochs=4), tmp_path / "run")
    rmse = summary["validation"]["freq"]["frequency_rmse"]
    target = prepare(_config(root, train_rows=256)).tables["validation"]["freq"].targets["freq"]
    values = target[~torch.isnan(target)].double()
    best_constant = math.sqrt(float(((values - values.mean()) ** 2).mean()))  # the mean of the validation targets themselves
    assert rmse < 0.5 * best_constant, (rmse, best_constant)


def test_no_training_rows_is_a_one_line_config_error(root):
    from transformers import AutoTokenizer

    with pytest.raises(ConfigError, match="training split only") as error:
        TokenFrequencyTask(name="freq").fit([], AutoTokenizer.from_pretrained(str(root)))
    assert "\n" not in str(error.value) and "'freq'" in str(error.value)
    with pytest.raises(RuntimeError, match="fit"):
        TokenFrequencyTask(name="freq").featurize([], None)
    with pytest.raises(ConfigError, match="smoothing"):
        parse_nlp_config({"encoder": {"name": "x"}, "tasks": [
            {"name": "a", "kind": "classification", "data": {"train": "a.tsv", "format": "glue_tsv"}},
            {"name": "freq", "kind": "token_frequency", "smoothing": 0, "data": {"from_tasks": ["a"]}}]}, "c.yaml")
