"""Trainer, evaluation and model selection."""

from mtlkit.train.callbacks import Callback, FitResult
from mtlkit.train.evaluate import evaluate, predict_logits
from mtlkit.train.spec import TrainSpec
from mtlkit.train.trainer import Trainer

__all__ = ["Callback", "FitResult", "TrainSpec", "Trainer", "evaluate", "predict_logits"]
