"""The study card's plotly figures, built from `trials.parquet` (no live study needed).

Each function returns a figure, or a string saying why there is none (too few trials, one
objective where two are needed...), which the card shows as a placeholder.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from studyflow.config import StudyConfig
from studyflow.outputs._importance import Scores
from studyflow.outputs._importance import complete
from studyflow.outputs._importance import importance_scores
from studyflow.outputs._importance import param_columns

# A big study's figures show what a screen can: parallel coordinates draw at most LINES_DRAWN
# trials (the best fifth of them, and a seeded sample of the rest), and the timeline merges a
# worker's bars of one kind that lie closer than 1/TIMELINE_COLUMNS of the run (under a pixel):
# at 60,000 trials each took ~10 s of a browser's time to open.
LINES_DRAWN = 5000
TIMELINE_COLUMNS = 2000
STATE_COLOURS = {"COMPLETE": "#2a9d8f", "PRUNED": "#e9c46a", "FAIL": "#e76f51", "TIMEOUT": "#9b2226",
                 "CACHED": "#8ecae6", "RUNNING": "#adb5bd"}
_LAYOUT = dict(height=380, margin=dict(t=30, l=60, r=20, b=50), template="plotly_white")

Figure = go.Figure | str


def history(trials: pd.DataFrame, direction: str, value_col: str = "value", label: str | None = None) -> Figure:
    """Each trial's value and the best so far; the value axis titled with the metric's name."""
    done = complete(trials)
    if done.empty:
        return "No trial completed yet."
    values = done[value_col]
    best = values.cummax() if direction == "maximize" else values.cummin()
    fig = go.Figure()
    fig.add_scattergl(x=done["number"], y=values, mode="markers", name="trial value",
                      marker=dict(size=6, color="#457b9d"))
    fig.add_scatter(x=done["number"], y=best, mode="lines", name="best so far", line=dict(color="#e63946"))
    fig.update_layout(xaxis_title="trial", yaxis_title=label or "value", **_LAYOUT)
    return fig


def pareto(trials: pd.DataFrame, directions: list[str], front: set[int],
           value_cols: Sequence[str] = ("values_0", "values_1"),
           labels: Sequence[str | None] = (None, None)) -> Figure:
    """The first two objectives, Pareto-optimal trials marked; axes titled with the metrics' names."""
    done = complete(trials)
    if done.empty:
        return "No trial completed yet."
    on_front = done["number"].isin(front)
    fig = go.Figure()
    for mask, name, colour in ((~on_front, "dominated", "#adb5bd"), (on_front, "Pareto-optimal", "#e63946")):
        part = done[mask]
        fig.add_scattergl(x=part[value_cols[0]], y=part[value_cols[1]], mode="markers", name=name,
                          text=[f"trial {n}" for n in part["number"]], marker=dict(size=7, color=colour))
    x_title, y_title = (label or f"objective {i} ({directions[i]})" for i, label in enumerate(labels[:2]))
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, **_LAYOUT)
    return fig


def importances(trials: pd.DataFrame, cfg: StudyConfig, scores: Scores | None = None) -> Figure:
    """Optuna's PED-ANOVA importances (`_importance`): `scores` computed elsewhere, or here."""
    scores = importance_scores(trials, cfg) if scores is None else scores
    if isinstance(scores, str):
        return scores
    names = list(scores)[::-1]
    fig = go.Figure(go.Bar(x=[scores[n] for n in names], y=names, orientation="h", marker_color="#457b9d"))
    title = "importance" + (" (objective 0)" if len(cfg.study_directions) > 1 else "")
    fig.update_layout(xaxis_title=title, **_LAYOUT)
    return fig


def log_params(cfg: StudyConfig) -> set[str]:
    """The parameters the study file declares on a log scale: the card draws them on log axes."""
    return {name for name, spec in cfg.search_space.items() if spec.log}


def parallel_coordinates(trials: pd.DataFrame, value_col: str, direction: str = "minimize",
                         log_params: Collection[str] = ()) -> Figure:
    done = complete(trials)
    params = param_columns(trials)
    if done.empty or not params:
        return "Parallel coordinates need completed trials with parameters."
    n_done, done = len(done), _lines_drawn(done, value_col, direction)
    dims = [_dimension(col.removeprefix("params_"), done[col], col.removeprefix("params_") in log_params)
            for col in params]
    dims.append(dict(label=value_col, values=done[value_col]))
    fig = go.Figure(go.Parcoords(line=dict(color=done[value_col], colorscale="Viridis", showscale=True),
                                 dimensions=dims))
    fig.update_layout(**{**_LAYOUT, "margin": dict(t=50, l=60, r=60, b=30)})
    if len(done) < n_done:
        best = LINES_DRAWN // 5
        fig.update_layout(title=dict(text=f"{len(done):,} of {n_done:,} trials drawn: the best {best:,} and "
                                          f"{len(done) - best:,} others at random", font=dict(size=12)),
                          margin=dict(t=90, l=60, r=60, b=30))
    return fig


def _dimension(label: str, series: pd.Series, log: bool = False) -> dict:
    """One parameter's axis. plotly draws no line through a missing value, and in a conditional
    space every trial lacks the parameters of the branches it did not take: a missing value is
    drawn at an 'n/a' tick below the others instead. A log-scale parameter is drawn in log10
    (as Optuna's plot does), its ticks labelled with its values."""
    if pd.api.types.is_numeric_dtype(series) and series.dtype != bool:
        values = series.astype(float)
        values = np.log10(values.where(values > 0)) if log else values
        missing = values.isna()
        if not missing.any() and not log:
            return dict(label=label, values=series)
        if missing.all():
            return dict(label=label, values=[0.0] * len(values), tickvals=[0.0], ticktext=["n/a"])
        low, high = values.min(), values.max()
        if log:  # the powers of ten in the range, and its ends
            ticks = sorted({low, high, *map(float, range(math.ceil(low), math.floor(high) + 1))})
            text = [f"{10 ** t:.3g}" for t in ticks]
        else:
            ticks = sorted({low + (high - low) * i / 4 for i in range(5)})  # evenly, as plotly's own
            text = [f"{t:.4g}" for t in ticks]
        if not missing.any():
            return dict(label=label, values=values, range=[low, high], tickvals=ticks, ticktext=text)
        na = low - 0.15 * ((high - low) or 1.0)
        return dict(label=label, values=values.fillna(na), range=[na, high], tickvals=[na, *ticks],
                    ticktext=["n/a", *text])
    codes, labels = pd.factorize(series.astype(str).where(series.notna()))
    tickvals, ticktext = list(range(len(labels))), list(labels)
    if (codes < 0).any():
        tickvals, ticktext = [-1, *tickvals], ["n/a", *ticktext]
    return dict(label=label, values=codes, tickvals=tickvals, ticktext=ticktext)


def _lines_drawn(done: pd.DataFrame, value_col: str, direction: str) -> pd.DataFrame:
    """At most `LINES_DRAWN` completed trials: the best fifth of that many, then a seeded
    sample of the others (the same card for the same trials)."""
    if len(done) <= LINES_DRAWN:
        return done
    ranked = done.sort_values(value_col, ascending=direction != "maximize", kind="stable")
    best = LINES_DRAWN // 5
    others = ranked.iloc[best:].sample(LINES_DRAWN - best, random_state=0)
    return pd.concat([ranked.iloc[:best], others]).sort_values("number")


def slices(trials: pd.DataFrame, value_col: str, log_params: Collection[str] = ()) -> Figure:
    done = complete(trials)
    params = param_columns(trials)
    if done.empty or not params:
        return "Slice plots need completed trials with parameters."
    fig = make_subplots(rows=1, cols=len(params), shared_yaxes=True,
                        subplot_titles=[p.removeprefix("params_") for p in params])
    for i, col in enumerate(params, start=1):
        fig.add_trace(go.Scattergl(x=done[col], y=done[value_col], mode="markers", showlegend=False,
                                   marker=dict(size=5, color=done["number"], colorscale="Blues")), row=1, col=i)
        if col.removeprefix("params_") in log_params:
            fig.update_xaxes(type="log", row=1, col=i)
    fig.update_yaxes(title_text=value_col, row=1, col=1)
    fig.update_layout(**{**_LAYOUT, "height": 320})
    return fig


def timeline(trials: pd.DataFrame) -> Figure:
    """One row per worker; each trial a bar from start to end, coloured by what happened."""
    timed = trials.dropna(subset=["datetime_start", "datetime_complete"])
    if timed.empty:
        return "No timed trials."
    start = pd.to_datetime(timed["datetime_start"])
    end = start + pd.to_timedelta(timed["duration_s"].fillna(0), unit="s")
    end = end.where(timed["duration_s"].notna(), pd.to_datetime(timed["datetime_complete"]))
    origin = start.min()
    kind = timed["state"].astype(str).where(~timed["cached"].fillna(False).astype(bool), "CACHED")
    kind = kind.where(~timed["error"].fillna("").str.startswith("Timeout"), "TIMEOUT")
    workers = timed["worker"].fillna("cache").astype(str)
    starts, ends = (start - origin).dt.total_seconds(), (end - origin).dt.total_seconds()
    gap = float(ends.max()) / TIMELINE_COLUMNS if len(timed) > TIMELINE_COLUMNS else -1.0
    fig = go.Figure()
    for state, colour in STATE_COLOURS.items():
        mask = kind == state
        if not mask.any():
            continue
        x, y, text = [], [], []
        for w, s, e, label in _bars(starts[mask], ends[mask], workers[mask], timed["number"][mask], gap):
            x += [s, e, None]
            y += [w, w, None]
            text += [label] * 3
        fig.add_scattergl(x=x, y=y, mode="lines", name=state, text=text, line=dict(color=colour, width=10))
    fig.update_layout(xaxis_title="seconds since the first trial", yaxis_title="worker",
                      **{**_LAYOUT, "height": max(220, 60 + 28 * workers.nunique())})
    return fig


def _bars(starts: pd.Series, ends: pd.Series, workers: pd.Series, numbers: pd.Series,
          gap: float) -> list[tuple[str, float, float, str]]:
    """(worker, start, end, hover text) of each trial, one worker's bars merged where the next
    starts within `gap` seconds of the end of those before it (a negative gap merges none)."""
    bars: list[list] = []  # [worker, start, end, lowest number, highest number, trials]
    for w, s, e, n in sorted(zip(workers, starts, ends, numbers)):
        last = bars[-1] if bars else None
        if last is not None and last[0] == w and s - last[2] <= gap:
            last[2], last[3], last[4], last[5] = max(last[2], e), min(last[3], n), max(last[4], n), last[5] + 1
        else:
            bars.append([w, s, e, n, n, 1])
    return [(w, s, e, f"trial {lo}" if count == 1 else f"{count} trials, numbers {lo} to {hi}")
            for w, s, e, lo, hi, count in bars]
