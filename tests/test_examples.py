"""Every example file under examples/ is a valid run config or study file, as the README tells users to run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlkit.config import load_any_config, read_config_file
from mtlkit.nlp.config import NLPRunConfig
from mtlkit.study.arms import load_study

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_the_examples_folder_is_found():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path):
    if "arms" in read_config_file(path):
        study = load_study(path)
        assert len(study.arms) >= 2 and study.arms[0].name == "single_task"  # the baseline arm is always there
    else:
        config = load_any_config(path)
        assert config.tasks if isinstance(config, NLPRunConfig) else config.data is not None
