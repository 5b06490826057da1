"""One self-contained HTML report of a study: no network, no scripts, figures inline as base64 PNG.

Sections: the verdict table (each arm against single-task, per task: mean paired difference, 95%
bootstrap interval, verdict, seeds needed) and Δm; each task's test metric by arm with intervals;
the task affinity heat map, the proposed grouping, gradient cosines and label correlations (when
``mtlkit study affinity`` ran); the tuning history; gradient-conflict plots of the final runs that
recorded them (``train.grad_diagnostics_every``); and the commands that reproduce each number.

Example:
    >>> html = render_report({"study": "s", "seeds": [0, 1], "metrics": {}, "budget": 1, "arms": {}, "history": {}, "commands": {}})
    >>> html.startswith("<!DOCTYPE html>") and "<script" not in html
    True
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.study.stats import bootstrap_interval


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if value == value else "nan"
    return html.escape(str(value))


def _verdict_table(results: dict[str, Any]) -> str:
    from mtlkit.study.results import verdict_rows

    rows = verdict_rows(results)
    columns = ("arm", "versus", "task", "metric", "mean difference", "95% CI low", "95% CI high", "verdict", "seeds needed")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    body = "".join(
        f'<tr class="{r["verdict"].split()[0]}"><td>{_fmt(r["arm"])}</td><td>{_fmt(r["versus"])}</td><td>{_fmt(r["task"])}</td><td>{_fmt(r["metric"])}</td>'
        f'<td>{r["mean_difference"]:.6g}</td><td>{r["ci_low"]:.6g}</td><td>{r["ci_high"]:.6g}</td><td>{_fmt(r["verdict"])}</td>'
        f'<td>{_fmt(r["seeds_needed"])}</td></tr>' for r in rows)
    return f'<table id="verdicts">{head}{body}</table>'


def _delta_m_table(results: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_fmt(arm)}</td><td>{e['delta_m']['mean']:.4g}</td><td>{e['delta_m']['low']:.4g}</td><td>{e['delta_m']['high']:.4g}</td>"
                   f"<td>{_fmt(e['delta_m']['verdict'])}</td></tr>" for arm, e in results["arms"].items() if "delta_m" in e)
    return f'<table id="delta-m"><tr><th>arm</th><th>Δm (%)</th><th>95% CI low</th><th>95% CI high</th><th>verdict</th></tr>{rows}</table>'


def _metric_figure(results: dict[str, Any]) -> str:
    tasks = list(results["metrics"])
    if not tasks or not results["arms"]:
        return ""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        names = [a for a, e in results["arms"].items() if task in e["test"]]
        means, lows, highs = [], [], []
        for arm in names:
            values = results["arms"][arm]["test"][task]
            low, high = bootstrap_interval(values)
            mean = float(np.mean(values))
            means.append(mean)
            lows.append(mean - low)
            highs.append(high - mean)
        ax.errorbar(range(len(names)), means, yerr=[lows, highs], fmt="o", capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{task}: test {results['metrics'][task]['name']}", fontsize=9)
    figure.tight_layout()
    return _png(figure)


def _matrix_figure(matrix: list[list[float | None]], labels: list[str], title: str, cmap: str = "RdBu", off_diagonal: bool = False) -> str:
    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    scale = values.copy()
    if off_diagonal:  # a task's effect on itself is not a transfer: it would set the colour scale alone
        np.fill_diagonal(scale, np.nan)
    bound = float(np.nanmax(np.abs(scale))) if np.isfinite(scale).any() else 1.0
    bound = bound or 1.0
    figure, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    image = ax.imshow(values, cmap=cmap, vmin=-bound, vmax=bound)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax)
    return _png(figure)


def _affinity_section(affinity: dict[str, Any] | None) -> str:
    if not affinity:
        return "<p>No affinity run: <code>mtlkit study affinity CONFIG --out DIR/affinity</code> adds it.</p>"
    tasks = affinity["tasks"]
    parts = [_matrix_figure(affinity["affinity"], tasks, "inter-task affinity Z[i→j] (row i's step, column j's loss)", off_diagonal=True),
             _matrix_figure(affinity["cosine"], tasks, "gradient cosine"),
             _matrix_figure(affinity["label_correlation"], tasks, "label correlation")]
    groups = "".join(f"<li>{html.escape(', '.join(g))}</li>" for g in affinity["grouping"]["groups"])
    return (f"{''.join(parts)}<p>Proposed grouping into at most {affinity['grouping']['budget']} models "
            f"(score {affinity['grouping']['score']:.4g}):</p><ul id=\"grouping\">{groups}</ul>")


def _history_figure(history: dict[str, list[dict[str, Any]]]) -> str:
    if not any(history.values()):
        return ""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.5, 3.2))
    for arm, trials in history.items():
        done = [t for t in trials if t["state"] == "complete"]
        pruned = [t for t in trials if t["state"] == "pruned"]
        line = ax.plot([t["number"] for t in done], [t["value"] for t in done], "o-", label=arm, markersize=4)[0]
        last = [(t["number"], t["curve"][max(t["curve"], key=int)]) for t in pruned if t["curve"]]
        if last:
            ax.plot(*zip(*last), "x", color=line.get_color())
    ax.set_xlabel("trial (x: pruned, at its last reported epoch)")
    ax.set_ylabel("validation objective (higher is better)")
    ax.legend(fontsize=7)
    return _png(figure)


def _diagnostics(out: Path | None, results: dict[str, Any]) -> str:
    if out is None:
        return ""
    images = []
    for arm in results["arms"]:
        for kind in ("gates", "gradients"):  # gated backbones write gates.png; train.grad_diagnostics_every, gradients.png
            for png in sorted((out / "finals" / arm).glob(f"seed-*/{kind}.png"))[:1]:
                images.append(f"<h3>{html.escape(arm)}: {kind} ({html.escape(png.parent.name)})</h3>"
                              f"<img alt=\"{kind}\" src=\"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}\">")
    return "".join(images) or ("<p>No gate usage or gradient diagnostics recorded (gated backbones such as MMoE write gate usage; "
                               "set <code>train.grad_diagnostics_every</code> in an arm's patch for gradient conflicts).</p>")


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}tr.helps td{background:#e6f4e6}tr.hurts td{background:#fbe4e4}"
         "code,pre{background:#f5f5f5;padding:2px 4px}img{max-width:100%}")


def render_report(results: dict[str, Any], out: Path | None = None) -> str:
    best = "".join(f"<tr><td>{_fmt(arm)}</td><td>{_fmt(e['best']['trial'])}</td><td>{_fmt(e['best']['validation'])}</td>"
                   f"<td><code>{html.escape(str(e['best']['params']))}</code></td></tr>" for arm, e in results["arms"].items())
    commands = [results["commands"].get("study", "")] + [c for e in results["arms"].values() for c in e.get("commands", [])]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mtlkit study {html.escape(results['study'])}</title><style>{STYLE}</style></head>
<body>
<h1>Does multi-task learning help? Study <code>{html.escape(results['study'])}</code></h1>
<p>Seeds: {_fmt(results['seeds'])}; tuning budget: {results['budget']} trials per arm (validation only); each arm's best setting
retrained on every seed and scored on test once. Differences are paired over seeds against the equal-capacity single-task arm,
signed so that positive means the arm is better.</p>
<h2>Verdicts</h2>
{_verdict_table(results)}
<h2>Δm (Maninis et al. 2019)</h2>
{_delta_m_table(results)}
<h2>Test metric by arm (mean, 95% bootstrap interval over seeds)</h2>
{_metric_figure(results)}
<h2>Which tasks belong together</h2>
{_affinity_section(results.get('affinity'))}
<h2>Tuning history</h2>
<table id="best"><tr><th>arm</th><th>best trial</th><th>validation objective</th><th>setting</th></tr>{best}</table>
{_history_figure(results['history'])}
<h2>Gate usage and gradient conflicts of the final runs</h2>
{_diagnostics(out, results)}
<h2>Reproduce</h2>
<pre id="commands">{html.escape(chr(10).join(c for c in commands if c))}</pre>
</body></html>
"""


def write_report(results: dict[str, Any], path: Path) -> Path:
    path.write_text(render_report(results, path.parent), encoding="utf-8")
    return path


__all__ = ["render_report", "write_report"]
