"""Evaluation metrics per task (AUC, GAUC, logloss, accuracy, RMSE, MAE) and MTL gain."""

from mtlkit.metrics.functions import METRICS, Metric, accuracy, auc, gauc, logloss, mae, rmse
from mtlkit.metrics.gain import delta_m, mtl_gain

__all__ = [
    "METRICS",
    "Metric",
    "accuracy",
    "auc",
    "delta_m",
    "gauc",
    "logloss",
    "mae",
    "mtl_gain",
    "rmse",
]
