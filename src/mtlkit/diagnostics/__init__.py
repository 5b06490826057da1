"""Model diagnostics: gate usage of mixture-of-experts backbones (matplotlib is imported only to plot)."""

from mtlkit.diagnostics.gates import GateDiagnostics, GateStats, gate_statistics, plot_gate_heatmap, write_gate_csv

__all__ = ["GateDiagnostics", "GateStats", "gate_statistics", "plot_gate_heatmap", "write_gate_csv"]
