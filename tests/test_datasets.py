import numpy as np
import pyarrow.compute as pc
import pytest

from mtlkit.data.datasets.census import FILES, census_files, load_census
from mtlkit.data.datasets.synthetic import mmoe_synthetic
from mtlkit.data.download import fetch
from mtlkit.errors import DataError


def label_correlation(p, m=10, n=20_000, seed=0):
    table = mmoe_synthetic(n=n, d=100, p=p, m=m, seed=seed)
    return float(np.corrcoef(table["y1"].to_numpy(), table["y2"].to_numpy())[0, 1])


def test_synthetic_label_correlation_rises_with_p():
    correlations = [np.mean([label_correlation(p, seed=s) for s in range(3)]) for p in (0.0, 0.5, 0.9, 1.0)]
    assert all(a < b for a, b in zip(correlations, correlations[1:])), correlations
    assert correlations[-1] > 0.99  # identical weights: labels differ by noise only


@pytest.mark.parametrize("p", [-0.5, 0.0, 0.3, 0.8])
def test_synthetic_linear_case_has_correlation_p(p):
    # Var(w_i·x) = c² = 1 and noise variance 0.01, so corr = p / 1.01; 0.02 covers sampling error.
    assert label_correlation(p, m=0, n=50_000) == pytest.approx(p / 1.01, abs=0.02)


def test_synthetic_is_seeded_and_validated():
    a, b = mmoe_synthetic(n=10, d=5, seed=3), mmoe_synthetic(n=10, d=5, seed=3)
    assert a.equals(b) and not a.equals(mmoe_synthetic(n=10, d=5, seed=4))
    with pytest.raises(ValueError):
        mmoe_synthetic(p=1.5)


@pytest.fixture(scope="module")
def census(request):
    from conftest import SHARED_DATA

    return {g: load_census(SHARED_DATA / "census_income_kdd", group=g) for g in (1, 2)}


def test_census_protocol(census):
    data = census[1]
    assert (data.train.num_rows, data.validation.num_rows, data.test.num_rows) == (199_523, 49_881, 49_881)
    assert pc.sum(data.train["income"]).as_py() == 12_382  # census.names: 6.2% above 50K
    assert pc.sum(data.train["marital"]).as_py() == 86_485  # PROVENANCE.md: never married
    features = [f.name for f in [*data.schema.categorical, *data.schema.numeric]]
    assert len(data.schema.numeric) == 7 and len(data.schema.categorical) == 32
    for leaked in ("income_50k", "marital_stat", "instance_weight", "income", "marital"):
        assert leaked not in features


def test_census_group_two_uses_education(census):
    data = census[2]
    assert [t.name for t in data.tasks] == ["education", "marital"]
    features = {f.name for f in data.schema.categorical}
    assert "education" not in features and "income_50k" in features
    # Children (47,422) and school grades are below college; 67,003 rows have some college or more.
    assert pc.sum(data.train["education"]).as_py() == 67_003


def test_census_validation_test_split_is_fixed_and_disjoint(census):
    again = load_census(census_files_root(), group=1)
    assert again.validation.equals(census[1].validation)
    assert census[1].validation.num_rows + census[1].test.num_rows == 99_762


def census_files_root():
    from conftest import SHARED_DATA

    return SHARED_DATA / "census_income_kdd"


def test_download_verifies_checksum(tmp_path, census_root):
    name = "census-income.test.gz"
    source = (census_root / name).resolve().as_uri()
    target = fetch(source, tmp_path / name, FILES[name])
    assert target.read_bytes() == (census_root / name).read_bytes()
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(source, tmp_path / "other.gz", "0" * 64)
    assert not (tmp_path / "other.gz").exists() and not (tmp_path / "other.gz.part").exists()
    with pytest.raises(DataError, match="cannot download"):
        fetch((tmp_path / "absent.gz").as_uri(), tmp_path / "x.gz", "0" * 64)


def test_download_into_cache(tmp_path, census_root, monkeypatch):
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path))
    paths = census_files(None, base_url=census_root.resolve().as_uri() + "/")
    assert all(p.parent == tmp_path / "census_income_kdd" and p.exists() for p in paths.values())


def test_missing_census_root_is_named(tmp_path):
    with pytest.raises(DataError, match="census-income.data.gz: no such file"):
        load_census(tmp_path)


def test_a_registered_dataset_is_a_config_name_with_validated_options():
    import pyarrow as pa
    from pydantic import Field

    from mtlkit.config import RunConfig
    from mtlkit.data.datasets import DATASETS, DatasetSplits
    from mtlkit.data.datasets.registry import BuiltinDataset, DatasetOptions
    from mtlkit.data.schema import NumericFeature, SchemaSpec
    from mtlkit.errors import ConfigError
    from mtlkit.run import prepare_data
    from mtlkit.tasks import Task

    class ToyOptions(DatasetOptions):
        rows: int = Field(default=10, ge=1)

    def load(options: ToyOptions) -> DatasetSplits:
        table = pa.table({"x": [float(i) for i in range(options.rows)], "y": [i % 2 for i in range(options.rows)]})
        return DatasetSplits(table, table, table, [Task(name="y", kind="binary")], SchemaSpec(numeric=[NumericFeature(name="x")]))

    with pytest.raises(Exception, match="unknown dataset 'toy_for_test'"):
        RunConfig.model_validate({"data": {"dataset": "toy_for_test"}})
    DATASETS.register("toy_for_test")(BuiltinDataset(ToyOptions, load))  # the one line a new dataset adds
    try:
        prepared = prepare_data(RunConfig.model_validate({"data": {"dataset": "toy_for_test", "dataset_options": {"rows": 6}}}))
        assert prepared.train.num_rows == 6 and prepared.names["test"] == "toy_for_test/test"
        with pytest.raises(ConfigError, match=r"^data.dataset_options: unknown key 'size' for toy_for_test \(rows\)$"):
            prepare_data(RunConfig.model_validate({"data": {"dataset": "toy_for_test", "dataset_options": {"size": 6}}}))
        with pytest.raises(ConfigError, match=r"^data.dataset_options for toy_for_test: key 'rows'"):
            prepare_data(RunConfig.model_validate({"data": {"dataset": "toy_for_test", "dataset_options": {"rows": 0}}}))
    finally:
        DATASETS.unregister("toy_for_test")
