"""Trainer, evaluation and model selection."""

from mtlkit.train.evaluate import evaluate, predict_logits
from mtlkit.train.spec import TrainSpec
from mtlkit.train.trainer import Callback, FitResult, Trainer

__all__ = ["Callback", "FitResult", "TrainSpec", "Trainer", "evaluate", "predict_logits"]
