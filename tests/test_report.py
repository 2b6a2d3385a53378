"""The study card on real finished studies: content that matches trials.parquet, and a real
headless Chromium opening it from a file:// path."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from studyflow import optimize
from studyflow.outputs import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPACE = {"x": {"type": "float", "low": 0, "high": 1}, "k": {"type": "int", "low": 1, "high": 3},
         "kind": {"type": "categorical", "choices": ["a", "b"]}}


def _table_data(html: str) -> dict:
    """The trials table's rows as the card carries them (its script draws a page of them)."""
    import json

    return json.loads(re.search(r'<script type="application/json" id="trial-rows">(.*?)</script>', html, re.S)
                      .group(1))


@pytest.fixture(scope="module")
def finished(client4, tmp_path_factory) -> Path:
    """A finished study with failures (objective raises when x > 0.7), written as the rule does."""
    tmp = tmp_path_factory.mktemp("card")
    study = {"objective": "sf_objectives:raises_when_large", "search_space": SPACE, "name": "card",
             "sampler": {"name": "random", "seed": 1}, "budget": {"n_trials": 30, "max_failures": 100},
             "report": {"title": "A card for the tests"}}
    result = optimize(None, study, client=client4, results_dir=tmp / "results", progress=False)
    result.write(tmp / "results/studies/card")
    write_report(tmp / "results/studies/card", tmp / "results/reports/card.html")
    return tmp


def test_every_section_is_there_and_numbers_match_the_trials_table(finished):
    html = (finished / "results/reports/card.html").read_text()
    trials = pd.read_parquet(finished / "results/studies/card/trials.parquet")
    for section in ("hero", "failures", "history", "importance", "parallel", "slices", "timeline", "trials", "facts"):
        assert f'id="{section}"' in html, section
    assert "<h1>A card for the tests</h1>" in html
    assert "<title>A card for the tests</title>" in html  # the browser tab's, as the heading
    best = trials.loc[trials["value"].idxmin()]
    assert re.search(rf'id="best-value">{best["value"]:.6g}<', html)
    assert f"at trial {int(best['number'])} of {len(trials)}" in html
    n_failed = int((trials["state"] == "FAIL").sum())
    assert n_failed > 0 and f"<b>{n_failed} failed trial(s)</b>" in html
    rows = _table_data(html)["rows"]  # the table's rows, drawn by the page from this block
    assert [int(r[0]) for r in rows] == trials["number"].tolist()
    assert [r[1] for r in rows] == trials["state"].tolist()
    assert "<script src=" not in html  # plotly.js inlined: works offline
    js_size = len(__import__("plotly.offline", fromlist=["get_plotlyjs"]).get_plotlyjs())
    assert len(html.encode()) - js_size < 5_000_000


def test_too_few_trials_give_a_placeholder_with_the_reason(client4, tmp_path):
    study = {"objective": "sf_objectives:instant", "search_space": {"x": SPACE["x"]}, "budget": {"n_trials": 3}}
    result = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    result.write(tmp_path / "results/studies/study")
    write_report(tmp_path / "results/studies/study", tmp_path / "card.html")
    html = (tmp_path / "card.html").read_text()
    assert "Parameter importances need at least 5 completed trials and one parameter; this study has 3" in html


def test_two_objectives_show_the_pareto_front_and_mark_its_trials(client4, tmp_path):
    study = {"objective": "sf_objectives:two_objectives", "directions": ["minimize", "minimize"],
             "budget": {"n_trials": 10}, "search_space": {"x": SPACE["x"]}}
    result = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    result.write(tmp_path / "results/studies/study")
    write_report(tmp_path / "results/studies/study", tmp_path / "card.html")
    html = (tmp_path / "card.html").read_text()
    assert 'id="pareto"' in html and 'id="history"' not in html
    assert sum(_table_data(html)["pareto"]) == len(result.best()["pareto_front"])


@pytest.mark.parametrize(("names", "columns"), [(["loss"], ["value_loss"]),
                                               (["error", "cost"], ["values_error", "values_cost"])])
def test_metric_names_name_the_value_columns_the_card_and_the_journal(client4, tmp_path, names, columns):
    """`metric_names`, the study file's `study.set_metric_names`: trials.parquet's value columns
    are named as Optuna's `trials_dataframe` names them, the card's axes and best.json carry the
    names, and the journal holds them (for Optuna, optuna-dashboard and `trial.study`)."""
    study = {"objective": "sf_objectives:named_metrics", "directions": ["minimize"] * len(names),
             "metric_names": names, "budget": {"n_trials": 10}, "search_space": {"x": SPACE["x"]}}
    result = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    result.write(tmp_path / "results/studies/study")
    write_report(tmp_path / "results/studies/study", tmp_path / "card.html")
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    optuna_columns = [c for c in result.study.trials_dataframe().columns if c.startswith("value")]
    assert [c for c in trials.columns if c.startswith("value")] == optuna_columns == columns
    assert result.study.metric_names == names and (trials["user_attrs_seen"] == ",".join(names)).all()
    assert result.best()["metric_names"] == names
    html = (tmp_path / "card.html").read_text()
    for name in names:
        assert f'"title":{{"text":"{name}"}}' in html  # an axis of the history or the Pareto front
    if len(names) == 1:
        assert f"Best (minimize {names[0]}) at trial" in html


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="no chromium here (.ci/run installs Debian's chromium)")
def test_chromium_opens_the_card_draws_the_plots_and_sorts_the_table(finished):
    from playwright.sync_api import sync_playwright

    card = finished / "results/reports/card.html"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(card.as_uri())
        for plot in ("history", "importance", "parallel", "slices", "timeline"):
            page.wait_for_selector(f"#plot-{plot} .main-svg", timeout=15_000)
        assert page.locator("#plot-history .scatterlayer .point, #plot-history .gl-container canvas").count() > 0
        value_col = page.locator("table.trials th", has_text=re.compile(r"^value$"))
        value_col.click()
        cells = page.locator("table.trials tbody tr td:nth-child(3)").all_inner_texts()
        numbers = [float(c) for c in cells if c]
        assert numbers == sorted(numbers) and len(numbers) > 0
        value_col.click()  # a second click sorts descending
        cells = page.locator("table.trials tbody tr td:nth-child(3)").all_inner_texts()
        numbers = [float(c) for c in cells if c]
        assert numbers == sorted(numbers, reverse=True)
        shot = Path(os.environ.get("STUDYFLOW_SCREENSHOTS", finished)) / "card.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        browser.close()
    assert errors == []


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="no chromium here (.ci/run installs Debian's chromium)")
def test_a_card_of_thousands_of_trials_draws_a_page_of_rows_and_sorts_and_filters_them_all(client4, tmp_path):
    """A quant's 2,500 instant backtests: the card holds a page of rows in the browser, not
    one per trial (a 60,000-trial card took 45 s to open that way), and sorting, filtering
    and 'show more' reach every trial."""
    from playwright.sync_api import sync_playwright

    from studyflow.outputs._report import TABLE_PAGE

    study = {"objective": "sf_objectives:instant", "search_space": {"x": SPACE["x"]}, "name": "many",
             "sampler": {"name": "random", "seed": 3}, "budget": {"n_trials": 2500}}
    result = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    result.write(tmp_path / "results/studies/many")
    card = write_report(tmp_path / "results/studies/many", tmp_path / "many.html")
    trials = result.trials
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page()
        page.goto(card.as_uri())
        rows = page.locator("table.trials tbody tr")
        assert rows.count() == TABLE_PAGE and page.inner_text("#rows-shown") == f"{TABLE_PAGE} of 2500 rows shown"
        page.locator("table.trials th", has_text=re.compile(r"^value$")).click()  # ascending: the best first
        assert float(rows.nth(0).locator("td").nth(2).inner_text()) == pytest.approx(trials["value"].min(), rel=1e-5)
        page.locator("table.trials th", has_text=re.compile(r"^value$")).click()  # descending: the worst first
        assert float(rows.nth(0).locator("td").nth(2).inner_text()) == pytest.approx(trials["value"].max(), rel=1e-5)
        page.click("#more-rows")
        assert rows.count() == 2 * TABLE_PAGE
        low = trials.sort_values("value").iloc[100]  # 2,400th from the top: beyond the 2,000 rows drawn
        page.fill("#filter", f"{low['params_x']:.6g}")
        found = [int(n) for n in page.locator("table.trials tbody tr td:nth-child(1)").all_inner_texts()]
        assert low["number"] in found and len(found) < len(trials)
        browser.close()


def test_a_big_studys_figures_draw_what_a_screen_shows_and_hide_no_trial_that_matters(client4, tmp_path):
    """6,000 instant trials: parallel coordinates draw 5,000 lines, the best 1,000 among them
    and says so; the timeline merges a worker's bars closer than a pixel, and every trial's
    time lies within a bar of its worker."""
    from studyflow.outputs import _figures as figures

    study = {"objective": "sf_objectives:instant", "search_space": {"x": SPACE["x"], "k": SPACE["k"]},
             "name": "big", "sampler": {"name": "random", "seed": 4}, "budget": {"n_trials": 6000}}
    trials = optimize(None, study, client=client4, results_dir=tmp_path, progress=False).trials
    parallel = figures.parallel_coordinates(trials, "value", "minimize")
    drawn = parallel.data[0].dimensions[-1].values
    assert len(drawn) == figures.LINES_DRAWN
    assert set(trials["value"].nsmallest(figures.LINES_DRAWN // 5)) <= set(drawn)
    assert parallel.layout.title.text.startswith("5,000 of 6,000 trials drawn: the best 1,000")
    timeline = figures.timeline(trials)
    bars = [(w, s, e) for trace in timeline.data
            for w, s, e in zip(trace.y[0::3], trace.x[0::3], trace.x[1::3])]
    assert len(bars) < len(trials)
    start = (trials["datetime_start"] - trials["datetime_start"].min()).dt.total_seconds()
    for worker, s in zip(trials["worker"], start):
        assert any(w == worker and b0 - 1e-9 <= s <= b1 + 1e-9 for w, b0, b1 in bars)
    small = figures.timeline(trials.head(100))  # a study a screen shows whole: a bar per trial
    assert sum(len(trace.x) for trace in small.data) == 3 * 100


def test_a_workers_importances_give_the_same_card_and_spare_the_report_importing_sklearn(client4, tmp_path):
    """An sklearn objective's workers have scikit-learn loaded: the optimize step computes the
    card's parameter importances there, so the report does not import it (Optuna's importance
    module would); the card is the same as when the report computes them itself."""
    import importlib
    import subprocess
    import sys

    client4.run(importlib.import_module, "sklearn")  # as an sklearn objective's workers have it
    study = {"objective": "sf_objectives:instant", "search_space": SPACE, "name": "imp",
             "sampler": {"name": "random", "seed": 2}, "budget": {"n_trials": 20}}
    study_dir = tmp_path / "results/studies/imp"
    optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False).write(study_dir)
    assert (study_dir / "importances.json").is_file()
    render = ("import sys; from studyflow.outputs import write_report; write_report(sys.argv[1], sys.argv[2]); "
              "print(' '.join(sorted({'sklearn', 'distributed'} & set(sys.modules))))")

    def report(out: str) -> str:
        """What of scikit-learn and distributed (which a report never needs) the report imported."""
        done = subprocess.run([sys.executable, "-c", render, str(study_dir), str(tmp_path / out)],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    assert report("from_worker.html") == ""
    (study_dir / "importances.json").unlink()
    assert report("from_report.html") == "sklearn"
    card = (tmp_path / "from_worker.html").read_text()
    assert 'id="plot-importance"' in card
    assert card == (tmp_path / "from_report.html").read_text()


def test_importances_of_a_maximized_first_objective_are_for_reaching_its_high_values():
    # objective 0 is high only where a > 0.7 (a decides its best values); its low values
    # are all 0 apart from a small -0.01 b, so importances for low values would name b
    from studyflow import load_study
    from studyflow.outputs._importance import importance_scores

    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=200), rng.uniform(size=200)
    first = np.where(a > 0.7, a, 0.0) - 0.01 * b
    space = {"a": {"type": "float", "low": 0, "high": 1}, "b": {"type": "float", "low": 0, "high": 1}}
    base = {"number": range(200), "state": "COMPLETE", "params_a": a, "params_b": b}
    single = importance_scores(pd.DataFrame({**base, "value": first}),
                               load_study({"objective": "m:f", "direction": "maximize", "search_space": space}))
    multi = importance_scores(pd.DataFrame({**base, "values_0": first, "values_1": b}),
                              load_study({"objective": "m:f", "directions": ["maximize", "minimize"],
                                          "search_space": space}))
    assert max(single, key=single.get) == "a"
    assert multi == pytest.approx(single)


def test_a_resumed_studys_card_measures_utilization_over_all_its_runs(client4, tmp_path):
    """best.json's wall time is the last run's: a rerun that ran nothing new (0.06 s) gave
    "worker utilization 9478%"; the card now divides by the active time of every run."""
    study = {"objective": "sf_objectives:sleepy", "search_space": SPACE, "name": "twice",
             "sampler": {"name": "random", "seed": 1}, "budget": {"n_trials": 8}}
    first = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    again = optimize(None, {**study, "budget": {"n_trials": 9}}, client=client4, results_dir=tmp_path / "results",
                     progress=False)
    assert again.best()["active_time_s"] >= first.best()["active_time_s"] >= first.wall_time_s * 0.5
    again.write(tmp_path / "results/studies/twice")
    write_report(tmp_path / "results/studies/twice", tmp_path / "card.html")
    html = (tmp_path / "card.html").read_text()
    utilization = int(re.search(r"worker utilization[^<]*</th><td>(\d+)%", html).group(1))
    assert 0 < utilization <= 100, utilization


def test_a_card_draws_importances_of_bool_and_mixed_categorical_choices(client4, tmp_path):
    """A define-by-run `[True, False]` categorical comes back from trials.parquet as bools and a
    declared `[None, 0.5, 1.0, "sqrt"]` one as text ('0.5'): building the importances' study
    from them raised `ValueError: 'True' not in ('False', 'True')` and no card was written."""
    study = {"objective": "sf_objectives:model_choices", "name": "choices",
             "search_space": {"max_features": {"type": "categorical", "choices": [None, 0.5, 1.0, "sqrt"]}},
             "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 30}}
    study_dir = tmp_path / "results/studies/choices"
    optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False).write(study_dir)
    write_report(study_dir, tmp_path / "card.html")
    html = (tmp_path / "card.html").read_text()
    assert 'id="plot-importance"' in html and "Parameter importances could not be computed" not in html


def test_parallel_coordinates_draw_the_trials_of_a_conditional_space(client4, tmp_path):
    """Each trial of a conditional space lacks the other branch's parameters: a NaN (or a
    category code -1) in any dimension keeps plotly from drawing its line, so the card's
    parallel coordinates were empty axes. A missing value is drawn at an 'n/a' tick instead."""
    import math

    from studyflow.outputs import _figures as figures

    study = {"objective": "sf_objectives:model_choices", "name": "branches",
             "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 20}}
    trials = optimize(None, study, client=client4, results_dir=tmp_path, progress=False).trials
    assert trials.filter(like="params_").isna().any(axis=1).all()  # no trial has every parameter
    dims = figures.parallel_coordinates(trials, "value").data[0].dimensions
    for dim in dims:
        values = [float(v) for v in dim.values]
        assert not any(math.isnan(v) for v in values), dim.label
        if dim.label in ("clf", "shrinking", "max_features"):  # categories: each value at its tick
            assert set(values) <= set(dim.tickvals), dim.label
    by_label = {dim.label: dim for dim in dims}
    for name in ("c", "depth", "shrinking", "max_features"):
        dim, missing = by_label[name], trials[f"params_{name}"].isna()
        na = dim.tickvals[list(dim.ticktext).index("n/a")]
        assert [float(v) == na for v in dim.values] == missing.tolist(), name
    drawn = [float(v) for v, gap in zip(by_label["c"].values, trials["params_c"].isna()) if not gap]
    assert drawn == trials["params_c"].dropna().tolist()


def test_log_scale_parameters_are_drawn_on_log_axes(client4, tmp_path):
    """The shipped study's `l2_regularization` (1e-6 to 10, log) on a linear axis put nearly
    every trial's line at its bottom end. As Optuna's plots do, a parameter declared `log: true`
    is drawn in log10 in the parallel coordinates (ticks labelled with its values) and on a
    log x axis in its slice."""
    import math

    from studyflow import load_study
    from studyflow.outputs import _figures as figures

    space = {"l2": {"type": "float", "low": 1e-6, "high": 10.0, "log": True}, "x": SPACE["x"]}
    study = {"objective": "sf_objectives:instant", "search_space": space, "name": "logs",
             "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 20}}
    trials = optimize(None, study, client=client4, results_dir=tmp_path, progress=False).trials
    log_params = figures.log_params(load_study(study))
    assert log_params == {"l2"}
    dims = {d.label: d for d in figures.parallel_coordinates(trials, "value", log_params=log_params).data[0].dimensions}
    assert [float(v) for v in dims["l2"].values] == pytest.approx([math.log10(v) for v in trials["params_l2"]])
    assert [float(v) for v in dims["x"].values] == pytest.approx(trials["params_x"].tolist())
    assert any(text.startswith("1e-0") for text in dims["l2"].ticktext)
    slices = figures.slices(trials, "value", log_params=log_params)
    assert slices.layout.xaxis.type == "log" and slices.layout.xaxis2.type != "log"
