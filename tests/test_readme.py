"""The README's YAML examples are real configs: each loads, and the ranking one builds its model."""

import re

import yaml

from mtlkit.config import load_any_config

from conftest import REPO

BLOCKS = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_every_readme_yaml_block_is_a_valid_config(tmp_path):
    assert len(BLOCKS) >= 3
    for i, block in enumerate(BLOCKS):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block)
        load_any_config(path)  # raises a ConfigError naming the key on any mistake


def test_the_ranking_recipe_builds_on_a_small_log(tmp_path):
    from mtlkit.models import build_model
    from mtlkit.run import encode_data, prepare_data

    block = next(b for b in BLOCKS if "shallow_tower" in b)
    config = yaml.safe_load(block)
    config["data"]["dataset_options"] = {"rows": 3000}
    path = tmp_path / "ranking.yaml"
    path.write_text(yaml.safe_dump(config))
    run = load_any_config(path)
    prepared = prepare_data(run)
    encoded = encode_data(prepared)
    model = build_model(run.model, encoded.schema, prepared.tasks).eval()
    out = model(encoded.validation.take(__import__("torch").arange(4)).inputs)
    assert set(out) == {"click", "share", "like", "watch", "watch_odds"}
    assert model.fused_score(out).shape == (4,)
