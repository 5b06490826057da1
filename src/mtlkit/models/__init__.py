"""Backbones (a registry: one file + one line per architecture) and the assembled model."""

from mtlkit.models import shared_bottom, single_task  # noqa: F401  (register backbones)
from mtlkit.models import mmoe  # noqa: F401  (omoe, mmoe)
from mtlkit.models import youtube_mmoe  # noqa: F401
from mtlkit.models import dselect_k  # noqa: F401
from mtlkit.models import ple  # noqa: F401  (cgc, ple)
from mtlkit.models import snr  # noqa: F401  (snr_trans, snr_aver)
from mtlkit.models import cross_stitch  # noqa: F401
from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.models.build import ModelSpec, build_model
from mtlkit.models.multitask import IndependentTaskModels, MultiTaskModel, TaskHead

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOptions",
    "IndependentTaskModels",
    "ModelSpec",
    "MultiTaskModel",
    "TaskHead",
    "build_model",
]
