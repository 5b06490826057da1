"""Evaluation metrics per task (AUC, GAUC, NDCG@k, logloss, ECE, accuracy, RMSE, MAE) and MTL gain."""

from mtlkit.metrics.functions import METRICS, Metric, accuracy, auc, ece, gauc, logloss, mae, rmse
from mtlkit.metrics.gain import delta_m, mtl_gain
from mtlkit.metrics.ranking import ndcg

__all__ = [
    "METRICS",
    "Metric",
    "accuracy",
    "auc",
    "delta_m",
    "ece",
    "gauc",
    "logloss",
    "mae",
    "mtl_gain",
    "ndcg",
    "rmse",
]
