"""The study matrix's comparison: one row per (problem, method) with its best value, trials,
failures and wall time (`summary/matrix.parquet`), and a page with that table and a heat map
(`reports/matrix.html`, linked from the index; self-contained like the study cards)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from studyflow._io import write_text
from studyflow.outputs._report import _CSS
from studyflow.outputs._counts import trial_counts
from studyflow.outputs._tables import write_parquet

COLUMNS = ("problem", "method", "study", "direction", "best_value", "n_trials", "complete", "pruned",
           "failed", "lost", "wall_time_s", "active_time_s", "best_number", "stop_reason")


def matrix_table(study_dirs: list[Path], pairs: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """`pairs`: {study: (problem, method)}; each study's folder holds best.json, trials.parquet."""
    rows = []
    for study_dir in study_dirs:
        best = json.loads((Path(study_dir) / "best.json").read_text())
        trials = pd.read_parquet(Path(study_dir) / "trials.parquet", columns=["state", "error"])
        problem, method = pairs[best["study"]]
        rows.append({
            "problem": problem, "method": method, "study": best["study"],
            "direction": ",".join(best["directions"]),
            "best_value": (best.get("best_values") or [None])[0],
            **trial_counts(trials["state"], trials["error"]),
            "wall_time_s": best.get("wall_time_s"),
            "active_time_s": best.get("active_time_s"),
            "best_number": best.get("best_number"),
            "stop_reason": best.get("stop_reason"),
        })
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.astype({"best_value": "float64", "wall_time_s": "float64", "active_time_s": "float64",
                      "best_number": "Int64"})


def relative_scores(df: pd.DataFrame) -> pd.Series:
    """Each method's best value within its problem on a 0 (worst) .. 1 (best) scale, so
    problems on different scales share one colour bar; 1 where all methods tie."""
    def score(group: pd.DataFrame) -> pd.Series:
        values = group["best_value"]
        if group["direction"].iloc[0] == "minimize":
            values = -values
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high > low else values * 0 + 1.0

    return df.groupby("problem", group_keys=False)[["best_value", "direction"]].apply(score).reindex(df.index)


def heat_map(df: pd.DataFrame):  # -> plotly Figure
    import plotly.graph_objects as go

    problems, methods = list(dict.fromkeys(df["problem"])), list(dict.fromkeys(df["method"]))
    scores = df.assign(score=relative_scores(df))
    z = scores.pivot(index="method", columns="problem", values="score").reindex(index=methods, columns=problems)
    values = df.pivot(index="method", columns="problem", values="best_value").reindex(index=methods, columns=problems)
    text = values.map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(), x=problems, y=methods, text=text.to_numpy(), texttemplate="%{text}",
        colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="best within<br>problem"),
        hovertemplate="problem %{x}<br>method %{y}<br>best value %{text}<extra></extra>",
    ))
    fig.update_layout(height=160 + 60 * len(methods), margin=dict(t=30, l=80, r=20, b=50),
                      template="plotly_white", xaxis_title="problem", yaxis_title="method")
    return fig


def render_matrix(df: pd.DataFrame) -> str:
    from plotly.offline import get_plotlyjs

    fig = heat_map(df).to_html(full_html=False, include_plotlyjs=False, div_id="plot-heatmap",
                               config={"displaylogo": False, "responsive": True}) if not df.empty else ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = []
    for rec in df.to_dict("records"):
        cells = []
        for col in COLUMNS:
            v = rec[col]
            text = "" if v is None or pd.isna(v) else (f"{v:.6g}" if isinstance(v, float) else str(v))
            if col == "study":
                text = f'<a href="{html.escape(text)}.html">{html.escape(text)}</a>'
            else:
                text = html.escape(text)
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>studyflow: study matrix</title>'
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body><h1>Study matrix</h1>"
            "<p>Colour: each method's best value within its problem, from worst (0) to best (1); "
            "the number is the best value itself.</p>"
            f'<section id="heatmap"><h2>Best value per problem and method</h2>{fig}</section>'
            f'<section id="table"><h2>Problems x methods</h2><table class="trials"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section><p><a href=\"index.html\">All studies</a></p>"
            "</body></html>\n")


def write_matrix(study_dirs: list[Path], pairs: dict[str, tuple[str, str]], table: str | Path,
                 page: str | Path) -> pd.DataFrame:
    df = matrix_table(study_dirs, pairs)
    write_parquet(df, table)
    write_text(page, render_matrix(df))
    return df
