"""Rendering the study card of a 1,000-trial study: time and size (with --open, the seconds
headless Chromium takes to open each file until every plot is drawn).

The baseline is what a user would do without studyflow: Optuna's own plotly visualizations of
the same sections (history, importances with Optuna's default evaluator, parallel coordinates,
slices, timeline) from a live study, written to one HTML file with plotly.js inlined.

    python benchmarks/report.py [--trials 1000] [--repeats 3] [--open]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from plotly.offline import get_plotlyjs

from studyflow import optimize
from studyflow.driver import connect
from studyflow.outputs import write_report

SPACE = {f"p{i}": {"type": "float", "low": 0, "high": 1} for i in range(4)}
SPACE["kind"] = {"type": "categorical", "choices": ["a", "b", "c"]}


def objective(trial):
    p = trial.params
    return sum((p[f"p{i}"] - 0.1 * i) ** 2 for i in range(4)) + {"a": 0, "b": 0.1, "c": 0.2}[p["kind"]]


def optuna_baseline(study: optuna.Study, out: Path) -> None:
    vis = optuna.visualization
    figs = [vis.plot_optimization_history(study), vis.plot_param_importances(study),
            vis.plot_parallel_coordinate(study), vis.plot_slice(study), vis.plot_timeline(study)]
    parts = [f.to_html(full_html=False, include_plotlyjs=False) for f in figs]
    table = study.trials_dataframe().to_html()
    out.write_text(f"<html><head><script>{get_plotlyjs()}</script></head><body>{''.join(parts)}{table}</body></html>")


def open_seconds(path: Path) -> float:
    """Seconds headless Chromium takes to load `path` and draw every plot in it."""
    import shutil

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--headless"])
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(path.as_uri(), timeout=600_000, wait_until="load")
        page.wait_for_function("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".every(function (d) { return d.querySelector('.main-svg'); })", timeout=600_000)
        seconds = time.perf_counter() - start
        browser.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--open", action="store_true", help="also time opening each file in headless Chromium")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    js = len(get_plotlyjs().encode())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = {"objective": "bench:objective", "search_space": SPACE, "sampler": {"name": "random", "seed": 0},
                 "budget": {"n_trials": args.trials}, "name": "bench"}
        with connect(2) as client:
            result = optimize(objective, study, client=client, results_dir=tmp / "results", progress=False)
        result.write(tmp / "results/studies/bench")
        ours, theirs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            write_report(tmp / "results/studies/bench", tmp / "card.html")
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            optuna_baseline(result.study, tmp / "optuna.html")
            theirs.append(time.perf_counter() - start)
        files = [("studyflow study card", ours, tmp / "card.html"), ("Optuna's visualizations (baseline)", theirs,
                                                                    tmp / "optuna.html")]
        rows = [(name, statistics.median(times), path.stat().st_size,
                 statistics.median(open_seconds(path) for _ in range(args.repeats)) if args.open else None)
                for name, times, path in files]
    print(f"\n{args.trials}-trial study, 5 parameters, median of {args.repeats}; plotly.js is {js / 1e6:.2f} MB\n")
    print("| renderer | seconds | vs baseline | file MB | MB apart from plotly.js |" + (" open in Chromium, s |" if args.open else ""))
    print("| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if args.open else ""))
    for name, seconds, size, opened in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / rows[1][1]:.2f}x | {size / 1e6:.2f} | {(size - js) / 1e6:.2f} |"
              + (f" {opened:.1f} |" if opened is not None else ""))


if __name__ == "__main__":
    main()
