"""Ranking datasets: Ali-CCP, AliExpress and KuaiRand loaders on the shared samples, and the
synthetic short-video generator."""

import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mtlkit.config import RunConfig
from mtlkit.data.datasets.aliccp import DENSE, SPARSE, load_aliccp
from mtlkit.data.datasets.aliexpress import load_aliexpress
from mtlkit.data.datasets.kuairand import load_kuairand
from mtlkit.data.datasets.shortvideo import (
    BLOCK_REQUESTS,
    generate_shortvideo,
    shortvideo_schema,
    shortvideo_table,
)
from mtlkit.data.download import sha256_of
from mtlkit.errors import ConfigError, DataError
from mtlkit.metrics.functions import auc
from mtlkit.run import encode_data, prepare_data

from conftest import SHARED_DATA

ALI_CCP = SHARED_DATA / "ali_ccp_sample"
ALIEXPRESS = SHARED_DATA / "aliexpress_sample"
KUAIRAND = SHARED_DATA / "kuairand_sample"


def total(table, column):
    return pc.sum(table[column]).as_py()


def features(schema):
    return {f.name for f in [*schema.categorical, *schema.numeric, *schema.sequences]}


def digests(folder, names):
    return {name: sha256_of(folder / name, uncompressed=name.endswith(".gz")) for name in names}


# -- Ali-CCP ------------------------------------------------------------------------------------


def test_aliccp_sample_splits_labels_and_schema():
    data = load_aliccp(ALI_CCP)
    assert (data.train.num_rows, data.validation.num_rows, data.test.num_rows) == (100, 50, 50)
    # PROVENANCE.md: clicks 7 / 3 / 2 and one purchase per file.
    assert [total(t, "click") for t in (data.train, data.validation, data.test)] == [7, 3, 2]
    assert [total(t, "ctcvr") for t in (data.train, data.validation, data.test)] == [1, 1, 1]
    both = pc.and_(pc.equal(data.train["click"], 1), pc.equal(data.train["purchase"], 1))
    assert data.train["ctcvr"].to_pylist() == pc.cast(both, pa.int8()).to_pylist()
    assert [(t.name, t.label, t.mask) for t in data.tasks] == [("ctr", "click", None), ("ctcvr", "ctcvr", None)]
    assert features(data.schema) == set(SPARSE) | set(DENSE)
    encoded = data.schema.fit(data.train).encode(data.test, data.tasks)
    assert encoded.inputs["categorical"].shape == (50, 23) and encoded.inputs["numeric"].shape == (50, 8)


def test_aliccp_bad_root_and_bad_file_are_named(tmp_path):
    with pytest.raises(DataError, match="ali_ccp_train.csv: no such file"):
        load_aliccp(tmp_path)
    with pytest.raises(DataError, match="no such directory"):
        load_aliccp(tmp_path / "absent")
    for name in ("ali_ccp_train_sample.csv", "ali_ccp_val_sample.csv", "ali_ccp_test_sample.csv"):
        shutil.copy(ALI_CCP / name, tmp_path / name)
    bad = tmp_path / "ali_ccp_val_sample.csv"
    lines = bad.read_text().splitlines()
    lines[3] = "2" + lines[3][1:]  # click = 2 on data row 3
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ali_ccp_val_sample.csv: column 'click' data row 3: value 2 \(expected 0 or 1\)"):
        load_aliccp(tmp_path)
    table = pacsv.read_csv(ALI_CCP / "ali_ccp_val_sample.csv").drop_columns(["D853"])
    pacsv.write_csv(table, bad)
    with pytest.raises(DataError, match="ali_ccp_val_sample.csv: missing column 'D853'"):
        load_aliccp(tmp_path)


def test_aliccp_download_is_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path))
    names = ["ali_ccp_train_sample.csv", "ali_ccp_val_sample.csv", "ali_ccp_test_sample.csv"]
    url = ALI_CCP.resolve().as_uri() + "/"
    with pytest.raises(DataError, match="no default base_url"):
        load_aliccp(None, sample=True)
    with pytest.raises(DataError, match="no pinned sha256"):
        load_aliccp(None, sample=True, base_url=url)
    data = load_aliccp(None, sample=True, base_url=url, sha256=digests(ALI_CCP, names))
    assert all((tmp_path / "ali_ccp" / n).exists() for n in names)
    assert data.train.equals(load_aliccp(ALI_CCP).train)


# -- AliExpress -----------------------------------------------------------------------------------


def test_aliexpress_sample_holds_out_whole_searches():
    data = load_aliexpress(ALIEXPRESS, country="nl")
    assert data.train.num_rows + data.validation.num_rows == 100 and data.test.num_rows == 20
    assert data.validation.num_rows > 0
    # PROVENANCE.md: 60 clicks and 2 conversions in train, 10 and 2 in test.
    assert total(data.train, "click") + total(data.validation, "click") == 60
    assert total(data.train, "conversion") + total(data.validation, "conversion") == 2
    assert (total(data.test, "click"), total(data.test, "conversion")) == (10, 2)
    assert not set(data.train["search_id"].to_pylist()) & set(data.validation["search_id"].to_pylist())
    assert load_aliexpress(ALIEXPRESS).validation.equals(data.validation)  # fixed seed
    assert len(data.schema.categorical) == 16 and len(data.schema.numeric) == 63
    assert "search_id" not in features(data.schema)
    assert [(t.name, t.label) for t in data.tasks] == [("ctr", "click"), ("ctcvr", "conversion")]


def test_aliexpress_options_root_and_download(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="country must be one of NL, ES, FR, US"):
        load_aliexpress(ALIEXPRESS, country="RU")
    with pytest.raises(DataError, match=r"AliExpress_ES/train.csv: no such file"):
        load_aliexpress(tmp_path, country="ES")
    # MTReclib layout: root/AliExpress_<country>/{train,test}.csv
    (tmp_path / "AliExpress_US").mkdir()
    shutil.copy(ALIEXPRESS / "aliexpress_train_sample.csv", tmp_path / "AliExpress_US" / "train.csv")
    shutil.copy(ALIEXPRESS / "aliexpress_test_sample.csv", tmp_path / "AliExpress_US" / "test.csv")
    local = load_aliexpress(tmp_path, country="US")
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "cache"))
    names = ["AliExpress_US/train.csv", "AliExpress_US/test.csv"]
    downloaded = load_aliexpress(None, country="US", base_url=tmp_path.resolve().as_uri() + "/", sha256=digests(tmp_path, names))
    assert downloaded.test.equals(local.test) and downloaded.validation.equals(local.validation)


# -- KuaiRand ---------------------------------------------------------------------------------------


def test_kuairand_joined_sample():
    data = load_kuairand(KUAIRAND)
    assert [t.name for t in data.tasks] == ["is_click", "long_view", "play_time"]  # no like/follow in the sample
    assert (data.train.num_rows, data.validation.num_rows, data.test.num_rows) == (160, 20, 20)
    whole = pa.concat_tables([data.train, data.validation, data.test])
    assert total(whole, "is_click") == 32  # PROVENANCE.md
    play, duration = whole["play_time_ms"].to_numpy(), whole["duration_ms"].to_numpy()
    expected = np.where(duration <= 18_000, play >= duration, play >= 18_000)
    assert whole["long_view"].to_numpy().tolist() == expected.astype(int).tolist()
    leaks = {"play_time_ms", "profile_stay_time", "comment_stay_time", "is_click", "long_view"}
    assert not features(data.schema) & leaks and {"user_id", "video_id", "duration_ms"} <= features(data.schema)
    encoded = data.schema.fit(data.train).encode(data.train, data.tasks)
    clicked = data.train["is_click"].to_numpy() == 1
    assert encoded.masks["play_time"].numpy().tolist() == clicked.tolist()
    assert encoded.masks["is_click"].all()
    with pytest.raises(DataError, match="kuairand_sample.csv: missing column 'is_like'"):
        load_kuairand(KUAIRAND, tasks=["is_click", "is_like"])


def official_layout(folder):
    """KuaiRand-Pure files made from the joined sample: two dated logs, user and video features."""
    sample = pacsv.read_csv(KUAIRAND / "kuairand_sample.csv")
    n = sample.num_rows
    rng = np.random.default_rng(0)
    dates = np.array([20220410, 20220425, 20220503])[np.arange(n) % 3]
    clicked = sample["is_click"].to_numpy()
    logs = sample.select(["user_id", "video_id", "is_click", "play_time_ms", "duration_ms", "tab"])
    logs = logs.append_column("date", pa.array(dates)).append_column("is_like", pa.array(clicked * (rng.random(n) < 0.3)))
    logs = logs.append_column("is_follow", pa.array(clicked * (rng.random(n) < 0.1)))
    prefixes = ("user_", "is_lowactive", "is_live", "is_video_author", "follow_", "fans_", "friend_", "register_", "onehot_")
    user_columns = [c for c in sample.column_names if c.startswith(prefixes)]
    users = pa.Table.from_pylist(list({r["user_id"]: r for r in sample.select(user_columns).to_pylist()}.values()))
    videos = sample.select(["video_id", "video_type", "visible_status", "server_width", "server_height"]).to_pylist()
    videos = pa.Table.from_pylist([{**r, "author_id": r["video_id"] % 7} for r in {r["video_id"]: r for r in videos}.values()])
    data = folder / "KuaiRand-Pure" / "data"
    data.mkdir(parents=True)
    early = dates <= 20220421
    pacsv.write_csv(logs.filter(pa.array(early)), data / "log_standard_4_08_to_4_21_pure.csv")
    pacsv.write_csv(logs.filter(pa.array(~early)), data / "log_standard_4_22_to_5_08_pure.csv")
    pacsv.write_csv(users, data / "user_features_pure.csv")
    pacsv.write_csv(videos, data / "video_features_basic_pure.csv")
    return sample, dates


def test_kuairand_official_layout_join_and_date_split(tmp_path):
    sample, dates = official_layout(tmp_path / "local")
    data = load_kuairand(tmp_path / "local")
    assert [t.name for t in data.tasks] == ["is_click", "is_like", "is_follow", "long_view", "play_time"]
    sizes = [int((dates == d).sum()) for d in (20220410, 20220425, 20220503)]
    assert [data.train.num_rows, data.validation.num_rows, data.test.num_rows] == sizes
    # The joins keep the log order and bring back each row's own user and video features.
    original = sample.filter(pa.array(dates == 20220410))
    for column in ("user_id", "video_id", "register_days", "onehot_feat3", "server_height"):
        assert data.train[column].to_pylist() == original[column].to_pylist(), column
    assert "author_id" in features(data.schema)
    assert total(data.train, "is_like") <= total(data.train, "is_click")


def test_kuairand_download_unpacks_the_archive(tmp_path, monkeypatch):
    official_layout(tmp_path / "src")
    archive = tmp_path / "mirror" / "KuaiRand-Pure.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "KuaiRand-Pure", arcname="KuaiRand-Pure")
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "cache"))
    url = archive.parent.resolve().as_uri() + "/"
    with pytest.raises(DataError, match="no pinned sha256 for .*KuaiRand-Pure.tar.gz"):
        load_kuairand(None, base_url=url)
    data = load_kuairand(None, base_url=url, sha256={"KuaiRand-Pure.tar.gz": sha256_of(archive, uncompressed=True)})
    assert data.train.equals(load_kuairand(tmp_path / "src").train)
    assert (tmp_path / "cache" / "kuairand" / "KuaiRand-Pure-files" / "KuaiRand-Pure" / "data").is_dir()
    with pytest.raises(ConfigError, match="version must be one of"):
        load_kuairand(tmp_path / "src", version="27k")


# -- synthetic short-video logs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def log():
    return shortvideo_table(200_000, seed=3)


def column(table, name):
    return table[name].to_numpy()


def test_shortvideo_rates_near_targets(log):
    # 200k impressions: binomial sd of the rates is ~0.0007 / 0.0002 / 0.00007 / 0.0001; the
    # tolerances also cover the pilot-sample calibration of the intercepts.
    assert column(log, "click").mean() == pytest.approx(0.10, abs=0.01)
    assert column(log, "like").mean() == pytest.approx(0.01, abs=0.002)
    assert column(log, "share").mean() == pytest.approx(0.001, abs=0.0004)
    assert column(log, "follow").mean() == pytest.approx(0.002, abs=0.0006)


def test_shortvideo_behaviours_need_a_click(log):
    unclicked = column(log, "click") == 0
    for name in ("like", "share", "follow", "watch_time"):
        assert (column(log, name)[unclicked] == 0).all(), name
    assert (column(log, "watch_time")[~unclicked] > 0).all()
    assert (column(log, "watch_time") <= column(log, "duration") + 1e-3).all()


def test_shortvideo_position_bias_is_real(log):
    position, click = column(log, "position"), column(log, "click")
    rates = np.array([click[position == p].mean() for p in range(10)])
    assert (np.diff(rates) < 0.005).all() and rates[0] > 3 * rates[-1], rates
    # P(click) = examination × relevance: the observed rate per position matches it (±0.01).
    expected = column(log, "true_examination") * column(log, "true_relevance")
    assert np.allclose(rates, [expected[position == p].mean() for p in range(10)], atol=0.01)
    # Position 0 is always fully examined; later positions less, whatever the relevance.
    assert (column(log, "true_examination")[position == 0] == 1).all()
    assert auc(column(log, "true_relevance"), click) > 0.6


def test_shortvideo_layout(log):
    assert log.schema.field("hist_items").type == pa.list_(pa.string())
    request, position = column(log, "request_id"), column(log, "position")
    assert (position == np.tile(np.arange(10), 20_000)).all() and (request == np.repeat(np.arange(20_000), 10)).all()
    lengths = pc.list_value_length(log["hist_items"]).to_numpy()
    assert 0 < lengths.mean() <= 20 and lengths.max() == 20
    history = pc.list_flatten(log["hist_items"].slice(0, 1000))
    assert pc.all(pc.starts_with(history, "i")).as_py()  # the item_id namespace
    assert "position" not in features(shortvideo_schema())
    # Every request shows distinct items (up to rare collisions when candidates repeat).
    pairs = len(set(zip(request[:10_000], column(log, "item_id")[:10_000])))
    assert pairs >= 9_990


def test_shortvideo_is_seeded_and_chunking_does_not_change_it(tmp_path):
    rows = 2 * BLOCK_REQUESTS * 10 + 1234  # three blocks, the last one cut
    table = shortvideo_table(rows, seed=7)
    assert table.equals(shortvideo_table(rows, seed=7)) and not table.equals(shortvideo_table(rows, seed=8))
    path = generate_shortvideo(tmp_path / "log.parquet", rows, seed=7, chunk_rows=BLOCK_REQUESTS * 10)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert pq.read_table(path).equals(table)
    assert not (tmp_path / "log.parquet.part").exists()


def test_shortvideo_options_are_checked():
    with pytest.raises(ConfigError, match="no option 'clicks'"):
        shortvideo_table(100, clicks=0.1)
    with pytest.raises(ConfigError, match="like_rate must lie in"):
        shortvideo_table(100, like_rate=0.2)
    with pytest.raises(ConfigError, match="click_rate 0.9 cannot be reached"):
        shortvideo_table(100, click_rate=0.9)


# -- config wiring ----------------------------------------------------------------------------------


def config(dataset, **options):
    return RunConfig.model_validate({"data": {"dataset": dataset, "dataset_options": options}})


def test_configs_load_builtin_ranking_datasets(tmp_path):
    prepared = prepare_data(config("ali_ccp", root=str(ALI_CCP)))
    assert prepared.train.num_rows == 100 and [t.name for t in prepared.tasks] == ["ctr", "ctcvr"]
    assert prepare_data(config("aliexpress", root=str(ALIEXPRESS), country="FR")).test.num_rows == 20
    assert prepare_data(config("kuairand", root=str(KUAIRAND), tasks=["is_click"])).tasks[0].name == "is_click"
    short = prepare_data(config("shortvideo", rows=5_000, seed=1, items_per_request=5))
    assert (short.train.num_rows, short.validation.num_rows, short.test.num_rows) == (4_000, 500, 500)
    encoded = encode_data(short)
    assert encoded.train.inputs["seq:hist_items"].shape == (4_000, 20)
    path = generate_shortvideo(tmp_path / "log.parquet", 3_000, seed=2)
    assert prepare_data(config("shortvideo", root=str(path))).train.num_rows == 2_400


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"^data.dataset_options: unknown key 'contry' for aliexpress \(root, country"):
        prepare_data(config("aliexpress", root=str(ALIEXPRESS), contry="NL"))
    with pytest.raises(ConfigError, match="^data.dataset_options: aliexpress country must be one of"):
        prepare_data(config("aliexpress", root=str(ALIEXPRESS), country="XX"))
    with pytest.raises(ConfigError, match="too many to generate in memory"):
        prepare_data(config("shortvideo", rows=10**9))
    with pytest.raises(ConfigError, match="unknown key 'size' for shortvideo"):
        prepare_data(config("shortvideo", size=10))


def test_shortvideo_drifting_interests_walk_over_categories_and_the_last_one_raises_clicks():
    from mtlkit.data.datasets import shortvideo as sv

    static = sv._Generator(20_000, 0, sv.ShortVideoSpec())
    assert static.universe.current_category is None  # off by default: the log is unchanged
    gen = sv._Generator(60_000, 0, sv.ShortVideoSpec(n_users=3000, interest_drift=3.0, history_length=10))
    u, table = gen.universe, gen.table(0, gen.n_blocks)
    long = u.history_length >= 6
    distinct = [len(set(u.category[h[h >= 0]])) for h in u.history[long]]
    assert np.mean(distinct) > 1.8  # several categories per history: only the last one is the current interest
    last = u.history[np.arange(len(u.history)), np.maximum(u.history_length - 1, 0)]
    assert np.array_equal(u.current_category[long], u.category[last[long]])
    user = np.array([int(x[1:]) for x in table["user_id"].to_pylist()])
    item = np.array([int(x[1:]) for x in table["item_id"].to_pylist()])
    same = u.category[item] == u.current_category[user]
    click = table["click"].to_numpy()
    assert click[same].mean() > 1.5 * click[~same].mean()
    assert abs(click.mean() - 0.10) < 0.01  # intercepts still calibrated to the click rate
    with pytest.raises(ConfigError, match="interest_drift"):
        sv.ShortVideoSpec(interest_drift=-1.0)
