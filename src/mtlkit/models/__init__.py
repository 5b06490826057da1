"""Backbones (a registry: one file + one line per architecture) and the assembled model."""

from mtlkit.models import (
    adatt,
    cross_stitch,
    dbmtl,
    dselect_k,
    home,
    metaheac,
    mmoe,
    pepnet,
    ple,
    shared_bottom,
    single_task,
    snr,
    star,
    stem,
    youtube_mmoe,
)
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
