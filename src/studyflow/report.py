"""The study card: one self-contained HTML file (plotly.js inlined once, works offline).

Step 1 content: the best trial, the optimization history with best-so-far (or the Pareto
front for several objectives), and a sortable table of every trial.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from studyflow._io import write_text

_TABLE_JS = """
document.querySelectorAll('table.trials th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.dataset.order !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? 'asc' : 'desc';
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.getElementById('filter').addEventListener('input', function (e) {
  var q = e.target.value.toLowerCase();
  document.querySelectorAll('table.trials tbody tr').forEach(function (r) {
    r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
  });
});
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.hero { background: #f3f6fa; border-radius: 8px; padding: 1em 1.5em; }
.hero .value { font-size: 2em; font-weight: 600; }
.banner { background: #fdecea; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
table.trials { border-collapse: collapse; font-size: 12px; }
table.trials th { cursor: pointer; background: #eee; position: sticky; top: 0; }
table.trials td, table.trials th { border: 1px solid #ddd; padding: 2px 6px; }
"""


def render(trials: pd.DataFrame, best: dict[str, Any], resolved_yaml: str) -> str:
    """Build the study card's HTML from the optimize rule's outputs."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    study = best["study"]
    directions = best["directions"]
    counts = trials["state"].value_counts().to_dict() if not trials.empty else {}
    figures = [_history(trials, directions, go)] if len(directions) == 1 else [_pareto(trials, directions, go)]
    plots = "\n".join(
        f.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}) for f in figures
    )
    failed = counts.get("FAIL", 0)
    banner = f'<div class="banner">{failed} failed trial(s); see the table\'s error column.</div>' if failed else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>studyflow: {html.escape(study)}</title>
<style>{_CSS}</style><script>{get_plotlyjs()}</script></head>
<body>
<h1>Study {html.escape(study)}</h1>
{_hero(best, len(trials))}
{banner}
<h2>{'Optimization history' if len(directions) == 1 else 'Pareto front'}</h2>
{plots}
<h2>Trials</h2>
<p><input id="filter" placeholder="filter rows"> {len(trials)} trials:
{html.escape(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))}</p>
{_table(trials)}
<h2>Study file (resolved)</h2><pre>{html.escape(resolved_yaml)}</pre>
<script>{_TABLE_JS}</script>
</body></html>
"""


def _hero(best: dict[str, Any], n: int) -> str:
    if best.get("best_number") is None:
        if best.get("pareto_front"):
            return f'<div class="hero">{len(best["pareto_front"])} Pareto-optimal trials of {n}</div>'
        return '<div class="hero">No trial completed.</div>'
    params = "".join(
        f"<li><code>{html.escape(k)}</code> = {html.escape(repr(v))}</li>"
        for k, v in best["best_params"].items()
    )
    return (
        f'<div class="hero"><div>Best ({best["directions"][0]}) at trial {best["best_number"]}'
        f" of {n}</div>"
        f'<div class="value" id="best-value">{best["best_values"][0]:.6g}</div><ul>{params}</ul></div>'
    )


def _history(trials: pd.DataFrame, directions: list[str], go: Any) -> Any:
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    fig = go.Figure()
    fig.add_scatter(x=done["number"], y=done["value"], mode="markers", name="trial value")
    running = done["value"].cummax() if directions[0] == "maximize" else done["value"].cummin()
    fig.add_scatter(x=done["number"], y=running, mode="lines", name="best so far")
    fig.update_layout(xaxis_title="trial", yaxis_title="value", height=420, margin=dict(t=30))
    return fig


def _pareto(trials: pd.DataFrame, directions: list[str], go: Any) -> Any:
    done = trials[trials["state"] == "COMPLETE"]
    fig = go.Figure()
    fig.add_scatter(x=done["values_0"], y=done["values_1"], mode="markers", text=done["number"])
    fig.update_layout(
        xaxis_title=f"objective 0 ({directions[0]})", yaxis_title=f"objective 1 ({directions[1]})",
        height=420, margin=dict(t=30),
    )
    return fig


def _table(trials: pd.DataFrame) -> str:
    cols = [c for c in trials.columns if c not in ("datetime_start", "datetime_complete")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for rec in trials[cols].itertuples(index=False):
        cells = []
        for v in rec:
            text = "" if pd.isna(v) else (f"{v:.6g}" if isinstance(v, float) else str(v))
            cells.append(f'<td data-v="{html.escape(text)}">{html.escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def write_report(study_dir: str | Path, out: str | Path) -> Path:
    study_dir = Path(study_dir)
    trials = pd.read_parquet(study_dir / "trials.parquet")
    best = json.loads((study_dir / "best.json").read_text())
    resolved = (study_dir / "resolved.yaml").read_text()
    return write_text(out, render(trials, best, resolved))


def write_index(study_dirs: list[Path], out: str | Path) -> Path:
    """An index page linking each study card, with its best value."""
    items = []
    for d in study_dirs:
        best = json.loads((Path(d) / "best.json").read_text())
        value = (best.get("best_values") or ["-"])[0]
        items.append(f'<li><a href="{html.escape(best["study"])}.html">{html.escape(best["study"])}</a>: best {value}</li>')
    return write_text(out, f"<!DOCTYPE html><html><body><h1>Studies</h1><ul>{''.join(items)}</ul></body></html>\n")
