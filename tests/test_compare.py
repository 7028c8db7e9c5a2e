"""Two studies side by side: the cross-domain prediction against hand formulas, and the page and
command built from two (synthetic) finished study folders."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tinydot.fits import cross_domain_predictions, cross_domain_summary
from tinydot.study import STUDY_EDITION, Study, job_name


def jobs_table(xs, ys, kinds=None, cb=None, held_key="digit") -> pd.DataFrame:
    """Jobs whose mean_L is xs and needed fraction ys (NaN: not reached)."""
    kinds = kinds or ["bin"] * len(xs)
    rows = []
    for i, (x, y, kind) in enumerate(zip(xs, ys, kinds)):
        rows.append({"kind": kind,
                     "measure": "L" if kind == "bin" else ("digit" if held_key == "digit" else "valid-ttr"),
                     "bin": i if kind == "bin" else -1, held_key: i if kind != "bin" else -1, "seed": 0,
                     "mean_L": x, "mean_compressed_bytes": (cb or xs)[i] if cb else 1.0 + 0.01 * x,
                     "needed_fraction": y, "untouched_fraction": 0.1, "trained_to_small_fraction": 0.2,
                     "used_fraction": 0.7, "dense_bits_per_step": 2.0, "prunable": 1000})
    return pd.DataFrame(rows)


def test_cross_domain_line_against_hand_formulas():
    x, y = np.array([10.0, 20.0, 30.0, 40.0]), np.array([0.50, 0.42, 0.38, 0.28])
    # a held-out job of the source never enters the fit; a not-reached target job is not predicted
    source = jobs_table([*x, 25.0], [*y, 0.9], kinds=["bin"] * 4 + ["class"])
    target = jobs_table([5.0, 25.0, 60.0, 12.0], [0.60, 0.30, 0.20, np.nan], kinds=["bin", "bin", "group", "bin"],
                        held_key="group")
    rows = cross_domain_predictions(source, target, ["L"], direction="strokes -> text")
    assert len(rows) == 3 and set(rows.x) == {5.0, 25.0, 60.0}
    assert rows.held_out.tolist() == [-1, -1, 2]  # the held-out group's name; -1 for bin jobs
    slope, intercept = np.polyfit(x, y, 1)
    # by hand: x mean 25, Sxx = 500, slope = sum((x - 25) y) / 500
    assert slope == pytest.approx((-15 * 0.50 - 5 * 0.42 + 5 * 0.38 + 15 * 0.28) / 500) == pytest.approx(-0.007)
    residuals = y - (intercept + slope * x)
    s2 = residuals @ residuals / 2
    t = stats.t.ppf(0.975, 2)
    for r in rows.itertuples():
        predicted = intercept + slope * r.x
        half = t * np.sqrt(s2 * (1 + 1 / 4 + (r.x - 25) ** 2 / 500))  # one new job
        assert r.predicted == pytest.approx(predicted)
        assert r.pi_low == pytest.approx(predicted - half) and r.pi_high == pytest.approx(predicted + half)
        assert r.covered == (predicted - half <= r.actual <= predicted + half)
        assert r.within_range == (10 <= r.x <= 40)
        assert r.baseline == pytest.approx((0.60 + 0.30 + 0.20) / 3)  # the target jobs' own mean
        assert r.source_mean_error == pytest.approx(y.mean() - r.actual)
        assert r.slope == pytest.approx(slope) and r.n_fit == 4
    summary = cross_domain_summary(rows).iloc[0]
    errors = intercept + slope * np.array([5.0, 25.0, 60.0]) - np.array([0.60, 0.30, 0.20])
    assert summary.mae == pytest.approx(np.abs(errors).mean())
    assert summary.rmse == pytest.approx(np.sqrt((errors ** 2).mean()))
    assert summary.baseline_mae == pytest.approx(np.abs(1.1 / 3 - np.array([0.60, 0.30, 0.20])).mean())
    assert summary.within_range == pytest.approx(1 / 3) and summary.n_predicted == 3
    predicted = intercept + slope * np.array([5.0, 25.0, 60.0])
    assert summary.impossible == pytest.approx(((predicted < 0) | (predicted > 1)).mean())
    assert summary.beats_baseline == (summary.mae < summary.baseline_mae)


def test_a_line_that_carries_over_beats_the_baseline_and_one_that_does_not_fails():
    x = np.array([10.0, 20.0, 30.0, 40.0])
    source = jobs_table(x, 0.8 - 0.01 * x + np.array([0.001, -0.001, -0.001, 0.001]))
    same_law = jobs_table([15.0, 35.0, 45.0], [0.65, 0.45, 0.35])  # on the source's line
    other_law = jobs_table([15.0, 35.0, 45.0], [0.20, 0.21, 0.19])  # flat, far below it
    good = cross_domain_summary(cross_domain_predictions(source, same_law, ["L"], direction="a -> b")).iloc[0]
    bad = cross_domain_summary(cross_domain_predictions(source, other_law, ["L"], direction="a -> b")).iloc[0]
    assert good.beats_baseline and good.mae < 0.005 and good.coverage == 1.0
    assert not bad.beats_baseline and bad.coverage == 0.0
    # fewer than three finite source bins: no line, no rows
    assert cross_domain_predictions(source.iloc[:2], same_law, ["L"]).empty
    # fewer than three finite target jobs: their own mean would be their values, no baseline to beat
    assert cross_domain_predictions(source, same_law.assign(needed_fraction=[0.65, np.nan, 0.35]), ["L"]).empty


def fake_study(folder, domain, jobs):
    """A finished study folder as `run_study` leaves it (config.json, jobs.csv, one job.json per job, ols.csv)."""
    study = Study.preset("quick", domain=domain)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**study.to_dict(), "edition": STUDY_EDITION}))
    jobs.to_csv(folder / "jobs.csv", index=False)
    key = "digit" if domain == "strokes" else "group"
    for r in jobs.itertuples():
        job = folder / "jobs" / job_name(r.measure, int(r.bin if r.kind == "bin" else getattr(r, key)), 0)
        job.mkdir(parents=True)
        (job / "job.json").write_text("{}")
    pd.DataFrame([{"model": "L", "target": "needed", "term": "L", "coef": -0.01, "ci_low": -0.02, "ci_high": 0.0,
                   "p_value": 0.04, "r2": 0.9, "n": 4, "intercept": 0.8}]).to_csv(folder / "ols.csv", index=False)
    return folder


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tinydot.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, cwd=cwd, timeout=300)


def test_compare_page_and_command(tmp_path):
    x = np.array([10.0, 20.0, 30.0, 40.0])
    strokes = fake_study(tmp_path / "study-s", "strokes",
                         jobs_table([*x, 28.0], [*(0.8 - 0.01 * x + [0.002, -0.002, -0.002, 0.002]), 0.5],
                                    kinds=["bin"] * 4 + ["class"]))
    text = fake_study(tmp_path / "study-t", "text",
                      jobs_table([12.0, 21.0, 30.0, 18.0], [0.30, 0.31, 0.29, 0.30], kinds=["bin"] * 3 + ["group"],
                                 held_key="group"))
    result = run("compare", str(strokes), str(text), "--out", "cmp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "cmp"
    assert {p.name for p in out.iterdir()} == {"compare.html", "cross_domain.png", "predictions.csv", "summary.csv"}
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.direction) == {"strokes -> text", "text -> strokes"}
    assert set(summary.predictor) == {"L", "compressed_bytes"}
    # the strokes line (0.8 - 0.01 L) misses the flat text jobs by far more than their own mean does
    row = summary[(summary.direction == "strokes -> text") & (summary.predictor == "L")].iloc[0]
    assert not row.beats_baseline and row.n_predicted == 4 and row.n_fit == 4
    html = (out / "compare.html").read_text()
    assert "pen steps" in html and "words" in html and "is a finding" in html
    assert f"its mean absolute error on the 4 text jobs is {row.mae:.3g}" in html
    assert "no" in result.stdout and "compare.html" in result.stdout


def test_compare_with_no_fittable_line_says_so_and_writes_headed_tables(tmp_path):
    # every text job "not reached": neither direction has a line, and the command says why
    fake_study(tmp_path / "study-s", "strokes", jobs_table([10.0, 20.0, 30.0], [0.5, 0.4, 0.3]))
    fake_study(tmp_path / "study-t", "text", jobs_table([5.0, 9.0, 14.0], [np.nan] * 3, held_key="group"))
    result = run("compare", "study-s", "study-t", "--out", "cmp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "No direction could be scored: a direction needs 3 bins of its source and 3 jobs of its target with " \
           "a finite fraction (strokes, text)." in result.stdout
    assert "beats baseline" not in result.stdout  # no empty table
    for name, column in (("predictions", "predicted"), ("summary", "beats_baseline")):
        table = pd.read_csv(tmp_path / "cmp" / f"{name}.csv")
        assert table.empty and column in table.columns


def test_compare_names_a_direction_it_could_not_fit(tmp_path):
    # two of the strokes bins "not reached": no strokes line, but three stroke jobs (a class among them) to predict
    strokes = jobs_table([10.0, 20.0, 30.0, 40.0, 25.0], [0.5, np.nan, np.nan, 0.3, 0.4], kinds=["bin"] * 4 + ["class"])
    fake_study(tmp_path / "study-s", "strokes", strokes)
    fake_study(tmp_path / "study-t", "text", jobs_table([5.0, 9.0, 14.0], [0.3, 0.31, 0.2], held_key="group"))
    result = run("compare", "study-s", "study-t", "--out", "cmp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(pd.read_csv(tmp_path / "cmp" / "summary.csv").direction) == {"text -> strokes"}
    html = (tmp_path / "cmp" / "compare.html").read_text()
    missing = ("The strokes line does not predict the text jobs here: a direction needs 3 bins of its source and 3 "
               "jobs of its target with a finite fraction.")
    assert missing in html and "in no direction" not in html
    assert "No: in the one direction fitted (text -&gt; strokes)" in html
    said = " ".join(result.stdout.split())  # the command prints the page's overall answer, wrapped to the terminal
    assert missing in said and "No: in the one direction fitted (text -> strokes)" in said
    assert "The text line does not predict" not in said


@pytest.mark.parametrize("args,message", [
    (["compare", "study-s", "missing", "--out", "cmp"], "study run folder missing does not exist"),
    (["compare", "study-s", "cmp-in", "--out", "cmp"], "cmp-in is not a finished study run"),
    (["compare", "study-s", "study-s", "--out", "cmp"], "is given twice"),
    (["compare", "study-s", "study-t", "--out", "study-t"], "study-t holds a study run, not a compare run; choose "
                                                            "another output folder"),
    (["compare", "study-s", "study-t", "--out", "study-t/figures"], "--out study-t/figures is inside the study "
                                                                    "folder "),
    (["compare", "study-s", "study-t", "--out", "study-s2/cmp"], "--out study-s2/cmp is inside the study folder "),
    (["compare", "study-s", "study-s2", "--out", "cmp"], "study-s and study-s2 hold runs of the same study "
                                                         "configuration (config hash "),
])
def test_bad_compare_input_gives_one_line_and_writes_nothing(args, message, tmp_path):
    fake_study(tmp_path / "study-s", "strokes", jobs_table([10.0, 20.0, 30.0], [0.5, 0.4, 0.3]))
    fake_study(tmp_path / "study-t", "text", jobs_table([5.0, 9.0, 14.0], [0.3, 0.3, 0.2], held_key="group"))
    fake_study(tmp_path / "study-s2", "strokes", jobs_table([10.0, 20.0, 30.0], [0.5, 0.4, 0.3]))  # a copy
    (tmp_path / "cmp-in").mkdir()  # a folder, but no study in it
    before = sorted(tmp_path.rglob("*"))
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_only_a_study_config_makes_a_parent_a_study(tmp_path):
    from tinydot.io import enclosing_study

    study = fake_study(tmp_path / "study-s", "strokes", jobs_table([10.0, 20.0, 30.0], [0.5, 0.4, 0.3]))
    assert enclosing_study(study / "jobs" / "x") == study.resolve() and enclosing_study(study) is None
    stray = tmp_path / "project"  # a folder that merely holds a file named as a study's
    (stray / "deep").mkdir(parents=True)
    (stray / "assignments.csv").write_text("index,bin\n")
    (stray / "config.json").write_text('{"study": 3}')
    assert enclosing_study(stray / "deep" / "out") is None
