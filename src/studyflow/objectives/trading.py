"""A moving-average crossover strategy with a stop-loss and position sizing, backtested with
numpy/pandas only (no per-bar Python loop), scored on walk-forward windows.

`walk_forward` is a dataset loader for the `stage` rule: it takes an OHLCV series that an
installed package ships (the `backtesting` package's GOOG daily or EURUSD hourly bars) and
stacks rolling in-sample / out-of-sample windows into one table (`fold`, `segment`). The
objective scores the in-sample Sharpe ratio, averaged over folds, and keeps the out-of-sample
figures as user attributes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from studyflow.errors import DataError

BARS_PER_YEAR = {"GOOG": 252, "EURUSD": 252 * 24}


def walk_forward(series: str = "GOOG", folds: int = 4, in_sample: int = 500, out_of_sample: int = 125) -> pd.DataFrame:
    """Rolling windows: fold k trains on `in_sample` bars, then tests on the next `out_of_sample`."""
    from backtesting import test as shipped

    bars = getattr(shipped, series).rename(columns=str.lower)
    span = in_sample + out_of_sample
    step = max(1, (len(bars) - span) // max(1, folds - 1)) if folds > 1 else 0
    if len(bars) < span:
        raise DataError(f"{series}: {len(bars)} bars is fewer than one window of {span}")
    parts = []
    for fold in range(folds):
        start = min(fold * step, len(bars) - span)
        window = bars.iloc[start:start + span].copy()
        window["fold"] = fold
        window["segment"] = ["is"] * in_sample + ["oos"] * out_of_sample
        window["bar"] = np.arange(span)
        parts.append(window)
    frame = pd.concat(parts).rename_axis("time").reset_index()
    frame.attrs["bars_per_year"] = BARS_PER_YEAR.get(series, 252)
    return frame


def positions(close: pd.Series, fast: int, slow: int, stop: float, size: float) -> pd.Series:
    """Long `size` while the fast MA is above the slow one, until the close falls `stop` below
    the entry price; re-entered at the next crossover. Vectorized with group-wise cumulations."""
    signal = close.rolling(fast).mean() > close.rolling(slow).mean()
    entry = signal & ~signal.shift(1, fill_value=False)
    trade = entry.cumsum()
    entry_price = close.where(entry).groupby(trade).transform("first")
    stopped = ((close / entry_price - 1) < -stop).groupby(trade).cummax()
    held = signal & ~stopped & (trade > 0)
    return held.astype(float).shift(1, fill_value=0.0) * size  # trade on the next bar


def metrics(close: pd.Series, pos: pd.Series, bars_per_year: int, cost: float = 0.0005) -> dict[str, float]:
    returns = close.pct_change().fillna(0.0)
    turnover = pos.diff().abs().fillna(pos.abs())
    strategy = pos * returns - turnover * cost
    std = strategy.std()
    sharpe = float(strategy.mean() / std * math.sqrt(bars_per_year)) if std > 0 else 0.0
    equity = (1 + strategy).cumprod()
    drawdown = float((1 - equity / equity.cummax()).max())
    return {"sharpe": sharpe, "return": float(equity.iloc[-1] - 1), "max_drawdown": drawdown}


def objective(
    trial: Any,
    data: pd.DataFrame,
    objectives: tuple[str, ...] | list[str] = ("sharpe",),
    bars_per_year: int = 252,
    cost: float = 0.0005,
) -> float | tuple[float, ...]:
    """In-sample figures averaged over the walk-forward folds; out-of-sample ones as user attrs.

    `objectives` picks what is returned: ["sharpe"] for one objective, or e.g.
    ["sharpe", "max_drawdown"] for a Pareto front.
    """
    fast = trial.suggest_int("fast", 5, 50)
    slow = trial.suggest_int("slow", 20, 200)
    stop = trial.suggest_float("stop", 0.01, 1.0)
    size = trial.suggest_float("size", 0.1, 1.0)
    if fast >= slow:
        trial.set_user_attr("note", "fast >= slow: no crossover")
    scores: dict[str, dict[str, list[float]]] = {"is": {}, "oos": {}}
    for _, window in data.groupby("fold", sort=True):
        close = window["close"].reset_index(drop=True)
        pos = positions(close, fast, slow, stop, size)
        segment = window["segment"].to_numpy()
        for seg in ("is", "oos"):
            mask = segment == seg
            for name, value in metrics(close[mask], pos[mask], bars_per_year, cost).items():
                scores[seg].setdefault(name, []).append(value)
    means = {seg: {k: float(np.mean(v)) for k, v in d.items()} for seg, d in scores.items()}
    for name, value in means["oos"].items():
        trial.set_user_attr(f"oos_{name}", value)
    trial.set_user_attr("is_return", means["is"]["return"])
    values = tuple(means["is"][name] for name in objectives)
    return values[0] if len(values) == 1 else values
