"""Model diagnostics: gate usage of mixture-of-experts backbones and per-task gradient conflicts
(matplotlib is imported only to plot)."""

from mtlkit.diagnostics.gates import GateDiagnostics, GateStats, gate_statistics, plot_gate_heatmap, write_gate_csv
from mtlkit.diagnostics.gradients import GradientDiagnostics, GradientMonitor, MonitoredBalancer, gradient_diagnostics, task_gradient_stats

__all__ = [
    "GateDiagnostics",
    "GateStats",
    "GradientDiagnostics",
    "GradientMonitor",
    "MonitoredBalancer",
    "gate_statistics",
    "gradient_diagnostics",
    "plot_gate_heatmap",
    "task_gradient_stats",
    "write_gate_csv",
]
