"""`train.precision: auto` (the default): bf16 where the hardware runs it natively, fp32 elsewhere;
a one-line warning for an explicit bf16 that the CPU emulates; the resolved precision in summary.json.

The hardware probe is replaced (monkeypatch of `native_bf16`) to take both branches on one
machine; one test runs a subprocess with oneDNN really capped to AVX2, unpatched.
"""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from mtlkit.config import RunConfig
from mtlkit.run import train_run
from mtlkit.train import TrainSpec
from mtlkit.train import precision as precision_module
from mtlkit.train.precision import cpu_bf16_native, resolve_precision

from test_precision import make, record_dtypes


@pytest.fixture
def native(monkeypatch):
    def set_native(value: bool):
        monkeypatch.setattr(precision_module, "native_bf16", lambda device_type: value)
    return set_native


def test_auto_is_the_default():
    assert TrainSpec().precision == "auto"


@pytest.mark.parametrize("is_native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_trains_in_bf16_only_where_native(native, is_native, expected):
    native(is_native)
    trainer, batches, valid = make(epochs=1)
    assert trainer.precision == ("bf16" if is_native else "fp32")
    seen = record_dtypes(trainer)
    result = trainer.fit(batches, valid)
    assert seen["backbone"] == {expected}
    assert result.precision == trainer.precision


def test_auto_falls_back_to_fp32_for_a_balancer_that_cannot_train_in_bf16(native):
    native(True)
    with pytest.raises(Exception, match="mgda_ub"):
        make("mgda_ub", backbone="shared_bottom", precision="bf16")  # asked for explicitly: refused
    trainer, _, _ = make("mgda_ub", backbone="shared_bottom")  # auto: fp32, no error
    assert trainer.precision == "fp32"


def test_explicit_bf16_on_an_emulating_cpu_warns_once_and_trains_as_asked(native, caplog):
    native(False)
    with caplog.at_level(logging.WARNING, logger="mtlkit"):
        trainer, _, _ = make(precision="bf16")
    warnings = [r for r in caplog.records if r.name == "mtlkit"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "emulated" in warnings[0].getMessage() and "fp32" in warnings[0].getMessage()
    assert trainer.precision == "bf16"
    caplog.clear()
    native(True)
    with caplog.at_level(logging.WARNING, logger="mtlkit"):
        make(precision="bf16")
        make(precision="fp32")
    assert not [r for r in caplog.records if r.name == "mtlkit"]


def test_native_means_avx512_bf16_or_amx_and_onednn_agreeing():
    assert not cpu_bf16_native({"avx", "avx2", "fma", "avx512f", "avx512bw"}, onednn_bf16=True)  # AVX512 without BF16
    assert cpu_bf16_native({"avx2", "avx512_bf16"}, onednn_bf16=True)
    assert cpu_bf16_native({"amx_bf16", "amx_tile"}, onednn_bf16=True)
    assert not cpu_bf16_native({"avx512_bf16", "amx_bf16"}, onednn_bf16=False)  # oneDNN capped or absent
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_onednn_capped_to_avx2_resolves_auto_to_fp32_and_warns_on_bf16():
    """Unpatched: the real probe, in a process where oneDNN may use AVX2 at most (an AVX2-only CPU's view)."""
    code = ("import torch; from mtlkit.train.precision import resolve_precision as r; "
            "print(r('auto', torch.device('cpu'))); print(r('bf16', torch.device('cpu')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["fp32", "bf16"]
    warning = [line for line in done.stderr.splitlines() if "train.precision" in line]
    assert len(warning) == 1 and "emulated" in warning[0], done.stderr


@pytest.mark.parametrize("requested", ["auto", "fp32"])
def test_summary_holds_the_resolved_precision(tmp_path, native, requested):
    native(True)
    import pyarrow.csv as pacsv

    from conftest import click_table

    pacsv.write_csv(click_table(300, 0), tmp_path / "train.csv")
    config = RunConfig.model_validate({
        "data": {"train": str(tmp_path / "train.csv")},
        "features": {"categorical": ["user", "item"], "numeric": ["price"]},
        "tasks": [{"name": "click", "kind": "binary"}],
        "model": {"backbone": "shared_bottom", "options": {"hidden": [8]}, "embedding_dim": 4},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "precision": requested},
    })
    summary = train_run(config, tmp_path / "run")
    expected = {"auto": "bf16", "fp32": "fp32"}[requested]
    assert summary["precision"] == expected
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["precision"] == expected
    assert f"precision: {requested}" in (tmp_path / "run" / "config.yaml").read_text()  # what was asked for stays
