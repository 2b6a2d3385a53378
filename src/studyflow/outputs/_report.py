"""The study card: one self-contained HTML file (plotly.js inlined once, so it works offline).

Sections: the best trial; the optimization history with best so far (the Pareto front for two
objectives); parameter importances; parallel coordinates; slices; a timeline of trials per
worker; a failure banner; a sortable, filterable table of every trial; and the run's facts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from studyflow._io import write_text
from studyflow.config import StudyConfig
from studyflow.config import load_study
from studyflow.outputs import _figures as figures
from studyflow.outputs._importance import IMPORTANCES_FILE
from studyflow.outputs._importance import Scores
from studyflow.outputs._importance import stored_scores
from studyflow.outputs._counts import trial_counts

# The trials table: every trial's cells travel as JSON, and the page holds rows for the first
# `TABLE_PAGE` of them in the current order (more on request), so a card of tens of thousands of
# trials opens and sorts in a moment; sorting and filtering work on every trial.
TABLE_PAGE = 1000
_TABLE_JS = """
(function () {
  var data = JSON.parse(document.getElementById('trial-rows').textContent);
  var table = document.querySelector('table.trials'), body = table.tBodies[0];
  var more = document.getElementById('more-rows'), count = document.getElementById('rows-shown');
  var PAGE = %d, shown = PAGE, query = '';
  var order = data.rows.map(function (r, i) { return i; }), view = order;
  var text = data.rows.map(function (r) { return r.join(' ').toLowerCase(); });
  function draw() {
    var frag = document.createDocumentFragment();
    view.slice(0, shown).forEach(function (i) {
      var tr = document.createElement('tr');
      if (data.pareto[i]) tr.className = 'pareto';
      data.rows[i].forEach(function (v) {
        var td = document.createElement('td'); td.textContent = v; tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    body.replaceChildren(frag);
    count.textContent = Math.min(shown, view.length) + ' of ' + view.length + ' rows shown';
    more.style.display = shown < view.length ? '' : 'none';
  }
  function refilter() {
    view = query ? order.filter(function (i) { return text[i].indexOf(query) >= 0; }) : order;
    shown = PAGE;
    draw();
  }
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.dataset.order !== 'asc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = asc ? 'asc' : 'desc';
      order = order.slice().sort(function (a, b) {
        var x = data.rows[a][col], y = data.rows[b][col];
        var nx = parseFloat(x), ny = parseFloat(y);
        var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return asc ? cmp : -cmp;
      });
      refilter();
    });
  });
  document.getElementById('filter').addEventListener('input', function (e) {
    query = e.target.value.toLowerCase();
    refilter();
  });
  more.addEventListener('click', function () { shown += PAGE; draw(); });
  draw();
})();
""" % TABLE_PAGE

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.hero { background: #f3f6fa; border-radius: 8px; padding: 1em 1.5em; }
.hero .value { font-size: 2em; font-weight: 600; }
.banner { background: #fdecea; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
table.trials { border-collapse: collapse; font-size: 12px; }
table.trials th { cursor: pointer; background: #eee; position: sticky; top: 0; }
table.trials td, table.trials th { border: 1px solid #ddd; padding: 2px 6px; }
table.trials th[data-order=asc]::after { content: " \\25B2"; }
table.trials th[data-order=desc]::after { content: " \\25BC"; }
tr.pareto td { background: #fff3f3; }
table.facts th { text-align: left; padding-right: 1em; font-weight: normal; color: #555; }
.placeholder { color: #777; font-style: italic; }
"""


def render(trials: pd.DataFrame, best: dict[str, Any], cfg: StudyConfig, scores: Scores | None = None) -> str:
    """Build the study card's HTML from the optimize rule's outputs (`scores`: the parameter
    importances, when the optimize step computed them)."""
    from plotly.offline import get_plotlyjs

    directions = best["directions"]
    multi = len(directions) > 1
    front = {p["number"] for p in best.get("pareto_front") or []}
    value_cols = cfg.value_columns
    value_col, labels = value_cols[0], cfg.metric_names or [None] * len(value_cols)
    sections = [
        ("pareto", "Pareto front", figures.pareto(trials, directions, front, value_cols, labels)) if multi
        else ("history", "Optimization history", figures.history(trials, directions[0], value_col, labels[0])),
        ("importance", "Parameter importances", figures.importances(trials, cfg, scores)),
        ("parallel", "Parallel coordinates", figures.parallel_coordinates(trials, value_col, directions[0],
                                                                           figures.log_params(cfg))),
        ("slices", "Slices", figures.slices(trials, value_col, figures.log_params(cfg))),
        ("timeline", "Timeline of trials per worker", figures.timeline(trials)),
    ]
    body = "\n".join(_section(sid, title, fig) for sid, title, fig in sections)
    counts = trials["state"].value_counts().to_dict() if not trials.empty else {}
    title = html.escape(str(cfg.report.get("title") or f"Study {cfg.name}"))
    tab = title if cfg.report.get("title") else html.escape(f"studyflow: {cfg.name or ''}")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{tab}</title>
<style>{_CSS}</style><script>{get_plotlyjs()}</script></head>
<body>
<h1>{title}</h1>
{_hero(best, len(trials), cfg.metric_names)}
{_failure_banner(trials)}
{body}
<section id="trials"><h2>Trials</h2>
<p><input id="filter" placeholder="filter rows"> {len(trials)} trials:
{html.escape(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))}. Click a column to sort.</p>
{_table(trials, front if multi else None, value_cols)}</section>
{_facts(trials, best, cfg)}
<script>{_TABLE_JS}</script>
</body></html>
"""


def _section(sid: str, title: str, fig: figures.Figure) -> str:
    if isinstance(fig, str):
        inner = f'<p class="placeholder">{html.escape(fig)}</p>'
    else:
        inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{sid}",
                            config={"displaylogo": False, "responsive": True})
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{inner}</section>'


def _failure_banner(trials: pd.DataFrame) -> str:
    failed = trials[trials["state"] == "FAIL"] if not trials.empty else trials
    if failed.empty:
        return ""
    errors = failed["error"].fillna("")
    timed_out = int(errors.str.startswith("Timeout").sum())
    lost = trial_counts(failed["state"], failed["error"])["lost"]
    others = len(failed) - timed_out - lost
    return (f'<div class="banner" id="failures"><b>{len(failed)} failed trial(s)</b>: '
            f"{others} raised or returned a bad value, {timed_out} timed out, {lost} lost with their "
            "worker or run (and retried). See the table's error column.</div>")


def _facts(trials: pd.DataFrame, best: dict[str, Any], cfg: StudyConfig) -> str:
    workers, wall = best.get("workers") or 0, best.get("wall_time_s") or 0
    active = best.get("active_time_s") or wall  # every run's (a resumed study's trials ran in each)
    busy = float(trials["duration_s"].fillna(0).sum()) if "duration_s" in trials else 0.0
    utilization = f"{busy / (workers * active):.0%}" if workers and active else "n/a"
    facts = {
        "stop reason": best.get("stop_reason"),
        "workers": workers,
        "wall time (this run)": f"{wall:.1f} s",
        "active time (every run)": f"{active:.1f} s",
        "worker utilization (objective time / workers x active time)": utilization,
        "cached trials (answered from the store)": int(trials["cached"].sum()) if "cached" in trials else 0,
        "data sha256": best.get("data_sha256") or "no data",
        "journal": best.get("journal"),
        **{f"{pkg} version": v for pkg, v in (best.get("versions") or {}).items()},
    }
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    return (f'<section id="facts"><h2>Run facts</h2><table class="facts">{rows}</table>'
            f"<h3>Study file (resolved)</h3><pre>{html.escape(cfg.to_yaml())}</pre></section>")


def _hero(best: dict[str, Any], n: int, names: list[str] | None = None) -> str:
    if best.get("best_number") is None:
        if best.get("pareto_front"):
            return f'<div class="hero" id="hero">{len(best["pareto_front"])} Pareto-optimal trials of {n}</div>'
        return '<div class="hero" id="hero">No trial completed.</div>'
    params = "".join(
        f"<li><code>{html.escape(k)}</code> = {html.escape(repr(v))}</li>"
        for k, v in best["best_params"].items()
    )
    return (
        f'<div class="hero" id="hero"><div>Best ({best["directions"][0]}{f" {html.escape(names[0])}" if names else ""})'
        f' at trial {best["best_number"]}'
        f" of {n}</div>"
        f'<div class="value" id="best-value">{best["best_values"][0]:.6g}</div><ul>{params}</ul></div>'
    )




TABLE_COLUMNS = ("duration_s", "worker", "cached", "error", "artifacts")  # after number, state, values, params


def _table(trials: pd.DataFrame, front: set[int] | None, values: list[str]) -> str:
    """Every trial's cells as the text shown (numbers sort as numbers in the page's script),
    in a JSON block the script draws the table's rows from (`_TABLE_JS`)."""
    params = [c for c in trials.columns if c.startswith("params_")]
    attrs = [c for c in trials.columns if c.startswith("user_attrs_")]
    cols = ["state", *values, *params, *(c for c in TABLE_COLUMNS if c in trials.columns), *attrs]
    head = ("<th>pareto</th>" if front is not None else "") + "".join(
        f"<th>{html.escape(c)}</th>" for c in ["number", *cols])
    rows, pareto = [], []
    for number, *cells in trials[["number", *cols]].itertuples(index=False):
        on_front = front is not None and number in front
        mark = ["yes" if on_front else ""] if front is not None else []
        rows.append(mark + [_cell_text(v) for v in [number, *cells]])
        pareto.append(on_front)
    data = json.dumps({"rows": rows, "pareto": pareto}, separators=(",", ":")).replace("</", "<\\/")
    return (f'<table class="trials"><thead><tr>{head}</tr></thead><tbody></tbody></table>'
            f'<p><button id="more-rows">show {TABLE_PAGE} more</button> <span id="rows-shown"></span></p>'
            f'<script type="application/json" id="trial-rows">{data}</script>')


def _cell_text(value: Any) -> str:
    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_report(study_dir: str | Path, out: str | Path, study_file: StudyConfig | None = None) -> Path:
    """Render a finished study. Report settings come from `study_file` (the study file as it
    is now, so editing them re-renders without re-running the study), else resolved.yaml."""
    study_dir = Path(study_dir)
    trials = pd.read_parquet(study_dir / "trials.parquet")
    best = json.loads((study_dir / "best.json").read_text())
    cfg = load_study(study_dir / "resolved.yaml")
    if study_file is not None:
        cfg.report = dict(study_file.report)
    stored = study_dir / IMPORTANCES_FILE
    scores = stored_scores(json.loads(stored.read_text()) if stored.is_file() else None, trials)
    return write_text(out, render(trials, best, cfg, scores))


def write_index(study_dirs: list[Path], out: str | Path, pages: dict[str, str] | None = None) -> Path:
    """An index page linking each study card, with its best value and trial counts, and
    `pages` ({file: title}, e.g. the study matrix's page) above it."""
    rows = []
    for d in study_dirs:
        best = json.loads((Path(d) / "best.json").read_text())
        trials = pd.read_parquet(Path(d) / "trials.parquet", columns=["state", "error"])
        counts = trial_counts(trials["state"], trials["error"])
        value = (best.get("best_values") or ["-"])[0]
        value = f"{value:.6g}" if isinstance(value, float) else value
        name = html.escape(best["study"])
        seconds = best.get("active_time_s", best.get("wall_time_s"))  # every run's, as the card's
        rows.append(f'<tr><td><a href="{name}.html">{name}</a></td><td>{",".join(best["directions"])}</td>'
                    f"<td>{value}</td><td>{counts['complete']}</td><td>{counts['pruned']}</td>"
                    f"<td>{counts['failed']}</td><td>{counts['lost']}</td><td>{seconds}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("study", "directions", "best", "complete", "pruned", "failed", "lost",
                                            "active s"))
    links = "".join(f'<li><a href="{html.escape(f)}">{html.escape(t)}</a></li>' for f, t in (pages or {}).items())
    return write_text(out, f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>studyflow studies</title>'
                           f"<style>{_CSS}</style></head><body><h1>Studies</h1>"
                           + (f'<ul id="pages">{links}</ul>' if links else "") +
                           f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
                           "</table></body></html>\n")
