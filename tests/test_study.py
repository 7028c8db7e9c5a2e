"""The study: configs, assignment, OLS against reference formulas, an end-to-end tiny run on real
data with resume, executors that agree, prediction, and the HTML report."""

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tinydot.errors import ConfigError, TinydotError
from tinydot.fits import (Line, fit_ols, held_out_validation, leave_one_bin_out, ols_table, predictor_ranking,
                          seed_slopes)
from tinydot.report.html import study_verdict, write_study_report
from tinydot.report.pages import write_report
from tinydot.study import TARGETS, Study, assign, load_study, predict, run_study

TINY_STUDY = {
    "study": {"measures": ["L", "S"], "bins": 3, "seeds": 1, "max_train_per_bin": 120},
    "model": {"n_layers": 1, "d_model": 16, "d_mlp": 32},
    "train": {"steps": 8, "tokens_per_batch": 1200, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 4},
    "prune": {"fraction": 0.5, "levels": 3, "rewind_step": 1},
}
TABLE_COLUMNS_THAT_MAY_DIFFER = ["seconds", "cost_wall_seconds", "cost_cpu_seconds", "cost_energy_kwh",
                                 "cost_co2_kg"]  # measured time and energy are not results


def test_presets_and_pinned_hashes():
    assert Study.preset("quick").study.bins == 3 and Study.preset("paper").study.seeds == 3
    # run folders are named by these hashes: changing them renames existing runs
    assert Study().hash() == Study.from_dict({}).hash()
    assert len(Study.preset("quick").hash()) == 10
    assert Study.from_dict(TINY_STUDY).hash() == Study.from_dict(json.loads(json.dumps(TINY_STUDY))).hash()
    assert Study.from_dict(TINY_STUDY).hash() != Study.preset("quick").hash()


@pytest.mark.parametrize("values,message", [
    ({"study": {"bins": 2}}, "bins must be an integer >= 3"),
    ({"study": {"measures": ["Q"]}}, "unknown study measure 'Q'"),
    ({"study": {"predictors": ["L", "gzip"]}}, "unknown study measure 'gzip'"),
    ({"study": {"held_out_classes": [1, 12]}}, "held_out_classes must be distinct digits"),
    ({"study": {"held_out_fraction": 0.7}}, "held_out_fraction must be in"),
    ({"studdy": {}}, "unknown study config section"),
    ({"model": {"d_model": -1}}, "d_model must be a positive integer"),
    ({"prune": {"delta": 0}}, "prune delta must be in"),
    ({"prune": {"delta": -0.01}}, "prune delta must be in"),
    ({"train": {"steps": 50}, "prune": {"rewind_step": 50}},
     "rewind_step .50. must be smaller than the training steps"),
])
def test_bad_study_config(values, message):
    with pytest.raises(ConfigError, match=message):
        Study.from_dict(values)
    with pytest.raises(ConfigError, match="unknown preset"):
        Study.preset("slow")


def test_assignment_holds_out_whole_classes_before_binning(train):
    study = Study.from_dict(TINY_STUDY)
    table = assign(train.subset(np.arange(3000)), study)
    held = np.isin(table["label"], [1, 5, 8])
    assert (table["held_class"] == held).all()
    for m in ("L", "S"):
        assert (table.loc[held, f"bin_{m}"] == -1).all()  # the bins are cut from the other classes only
        counts = table.loc[~held].groupby(f"bin_{m}").size()
        assert len(counts) == 3 and counts.max() - counts.min() <= 1
    for c in (1, 5, 8):  # each held-out class keeps ~10% for its own held-out NLL
        members = table["label"] == c
        assert table.loc[members, "held_out_class"].sum() == round(0.1 * members.sum())
    assert {"compressed_bytes", "spectral_entropy"} <= set(table.columns)


def synthetic_jobs(noise: float, slope: float = -0.004, intercept: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Bin jobs whose targets lie on known lines of mean_L (plus noise), and three held-out classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, groups in (("bin", [("L", b, 20.0 + 10 * b) for b in range(5)]),
                         ("class", [("digit", d, x) for d, x in ((1, 25.0), (8, 45.0))])):
        for measure, b, x in groups:
            for s in range(2):
                y = intercept + slope * x + noise * rng.standard_normal()
                rows.append({"kind": kind, "measure": measure, "bin": b if kind == "bin" else -1,
                             "digit": b if kind == "class" else -1, "seed": s, "mean_L": x + s,
                             "mean_S": 0.5 + 0.01 * x - 0.01 * s + 0.05 * rng.standard_normal(),
                             **{f"{t}_fraction": y + 0.1 * k for k, t in enumerate(TARGETS)}})
    return pd.DataFrame(rows)


def test_ols_matches_the_textbook_formulas():
    jobs = synthetic_jobs(noise=0.01)
    ols = ols_table(jobs, ["L", "S"], TARGETS)
    row = ols[(ols.model == "L") & (ols.target == "needed")].iloc[0]
    part = jobs[jobs.kind == "bin"]  # the held-out classes never enter a fit
    x, y = part.mean_L.to_numpy(), part.needed_fraction.to_numpy()
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    se = np.sqrt(residuals @ residuals / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
    t = stats.t.ppf(0.975, len(x) - 2)
    assert row.coef == pytest.approx(slope) and row.intercept == pytest.approx(intercept)
    assert row.ci_low == pytest.approx(slope - t * se) and row.ci_high == pytest.approx(slope + t * se)
    assert row.p_value == pytest.approx(2 * stats.t.sf(abs(slope / se), len(x) - 2))
    assert row.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert set(ols.model) == {"L", "S", "joint"} and row.n == 10


def test_a_not_reached_needed_fraction_is_left_out_of_the_fit():
    jobs = synthetic_jobs(noise=0.01)
    jobs.loc[0, "needed_fraction"] = np.nan
    row = ols_table(jobs, ["L"], TARGETS).query("target == 'needed'").iloc[0]
    assert row.n == 9


def test_a_target_equal_in_every_job_has_slope_zero_and_no_p_value():
    # e.g. the same bit width in every bin job (the stroke paper study's seed 0: 0.125 in all 8): OLS
    # fits it exactly with a rounding-noise slope (~1e-16), whose t = 0 / 0 once gave p = 0.54
    jobs = synthetic_jobs(noise=0.01)
    jobs["bits_fraction"] = 0.125
    ols = ols_table(jobs, ["L", "S"], ["bits", "needed"])
    flat = ols[ols.target == "bits"]
    assert len(flat) == 4  # L, S and the joint model's two
    assert (flat.coef == 0).all() and (flat.ci_low == 0).all() and (flat.ci_high == 0).all()
    assert flat[["p_value", "r2", "p_cluster"]].isna().all().all()
    assert flat.intercept.to_numpy() == pytest.approx(0.125, abs=1e-12)
    assert ols[ols.target == "needed"][["p_value", "r2"]].notna().all().all()  # the other target keeps its fit
    jobs.loc[jobs.seed == 1, "bits_fraction"] = 0.1 + 0.001 * jobs.loc[jobs.seed == 1, "mean_L"]
    slopes = seed_slopes(jobs, ["L"], ["bits"]).set_index("seed")
    assert slopes.loc[0, "slope"] == 0 and np.isnan(slopes.loc[0, "p_value"])
    assert slopes.loc[1, "slope"] == pytest.approx(0.001) and slopes.loc[1, "p_value"] < 1e-6
    jobs = jobs.assign(bits_fraction=0.125, needed_reached=True, prunable=1000)
    text = " ".join(study_verdict(jobs, ols_table(jobs, ["L"], ["bits"]), pd.DataFrame(), delta=0.01,
                                  targets={"bits": "bits fraction"}))
    assert "Bits fraction: 0.125 in every bin job (n = 10), so no complexity measure moves it." in text
    text = " ".join(study_verdict(jobs, ols_table(jobs, ["L"], ["bits"]), pd.DataFrame(), delta=0.01,
                                  targets={"bits": "bits (fewest GPFQ bits)"}))
    assert "Bits (fewest GPFQ bits): 0.125" in text  # the first letter capitalized, no other ("Gpfq")
    # predicted exactly too: rounding noise would rank the predictors (errors of 1e-17, intervals
    # [0.12499999, 0.12500001]); 0.1 is no binary fraction, so a sum of copies divided by their count misses it
    jobs["bits_fraction"] = 0.1
    assert 0.1 * 3 / 3 != 0.1
    line = Line(jobs[["mean_L"]], jobs["bits_fraction"], jobs["bin"])
    assert line.predict(33.0) == {"mean": 0.1, "ci_low": 0.1, "ci_high": 0.1, "pi_low": 0.1, "pi_high": 0.1,
                                  "within_range": True}
    assert line.mean_at([99.0]) == 0.1
    loo = leave_one_bin_out(jobs, ["L", "S"], ["bits"])
    assert len(loo) == 10 and (loo.predicted == 0.1).all()
    assert (loo.error == 0).all() and (loo.baseline_error == 0).all()
    validation = held_out_validation(jobs, ["L", "S"], ["bits", "needed"])
    bits = validation[validation.target == "bits"]
    assert (bits[["predicted", "pi_low", "pi_high", "measured", "baseline"]] == 0.1).all().all()
    ranking = predictor_ranking(validation)
    assert (ranking[ranking.target == "bits"]["rank"] == 1).all()  # a tie, not an order of rounding noise
    text = " ".join(study_verdict(jobs.assign(needed_reached=True, prunable=1000), ols_table(jobs, ["L"], ["bits"]),
                                  validation, delta=0.01, targets={"bits": "bits fraction"}))
    assert ("On the held-out classes (1, 8), every line predicts the bits fraction the bin jobs all had, 0.1: "
            "mean absolute error 0, so there is no best predictor to name.") in text
    assert "the best predictor of the needed fraction is" in text  # a target that varies is still ranked
    from tinydot.report.figures import ols_fits

    fig = ols_fits(jobs, ["L"], {"needed": "needed", "bits": "bits"}, validation)
    needed_axis, bits_axis = fig.axes
    assert bits_axis.get_legend_handles_labels()[1][0] == "0.1 in every job"  # a flat line, not a noise slope
    assert needed_axis.get_legend_handles_labels()[1][0].startswith("slope ")


def test_a_line_without_data_sets_gives_the_textbook_prediction_interval():
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"L": rng.uniform(20, 50, 12)})
    y = 0.3 - 0.002 * x["L"] + 0.01 * rng.standard_normal(12)
    frame = fit_ols(x, y).get_prediction(np.array([[1.0, 33.0]])).summary_frame(alpha=0.05).iloc[0]
    line = Line(x, y).predict([33.0])
    assert line["mean"] == pytest.approx(frame["mean"])
    assert (line["pi_low"], line["pi_high"]) == pytest.approx((frame["obs_ci_lower"], frame["obs_ci_upper"]))
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((frame["mean_ci_lower"], frame["mean_ci_upper"]))


def test_a_line_through_data_sets_predicts_a_new_data_sets_mean_of_seeds():
    # 8 data sets x 3 seeds at one x each: the line through the jobs and through the means coincide;
    # the interval of a new data set's mean of 3 seeds is the textbook one on the 8 means (6 df), and
    # that of one job adds the seed noise that a mean of 3 averages away (one-way ANOVA by hand)
    rng = np.random.default_rng(1)
    xs, offsets = np.linspace(20, 50, 8), 0.02 * rng.standard_normal(8)
    x = np.repeat(xs, 3)
    y = 0.3 - 0.002 * x + np.repeat(offsets, 3) + 0.01 * rng.standard_normal(24)
    groups = np.repeat(np.arange(8), 3)
    line = Line(pd.DataFrame({"L": x}), y, groups)
    jobs_fit, means = fit_ols(x, y), y.reshape(8, 3).mean(axis=1)
    assert line.fit.params == pytest.approx(jobs_fit.params)
    frame = fit_ols(xs, means).get_prediction(np.array([[1.0, 33.0]])).summary_frame(alpha=0.05).iloc[0]
    three = line.predict([33.0], observations=3)
    assert (three["pi_low"], three["pi_high"]) == pytest.approx((frame["obs_ci_lower"], frame["obs_ci_upper"]))
    within = ((y.reshape(8, 3) - means[:, None]) ** 2).sum() / (24 - 8)
    s2_sets = ((means - fit_ols(xs, means).fittedvalues) ** 2).sum() / 6
    half = stats.t.ppf(0.975, 6) * np.sqrt(frame["mean_se"] ** 2 + max(s2_sets - within / 3, 0) + within)
    one = line.predict([33.0])
    assert (one["pi_low"], one["pi_high"]) == pytest.approx((frame["mean"] - half, frame["mean"] + half))
    assert one["within_range"] and not line.predict([60.0])["within_range"]


def test_the_data_set_interval_covers_95_percent_where_the_job_interval_does_not():
    # simulated studies whose data sets deviate from the line far more than seeds from their data set
    # (as the unused share does): the interval for a new data set's mean of 3 seeds must cover ~95%;
    # the one that took the 24 jobs for independent points (and so divided all their noise by 3)
    # covers far less
    rng = np.random.default_rng(2)
    x = pd.DataFrame({"L": np.repeat(np.linspace(20, 50, 8), 3)})
    groups, covered, independent, trials = np.repeat(np.arange(8), 3), 0, 0, 400
    for _ in range(trials):
        y = 0.3 - 0.002 * x["L"] + np.repeat(0.02 * rng.standard_normal(8), 3) + 0.005 * rng.standard_normal(24)
        x_new = rng.uniform(20, 50)
        truth = 0.3 - 0.002 * x_new + 0.02 * rng.standard_normal() + 0.005 * rng.standard_normal(3).mean()
        line = Line(x, y, groups).predict([x_new], observations=3)
        covered += line["pi_low"] <= truth <= line["pi_high"]
        fit = fit_ols(x, y)  # the jobs as independent points: all their noise divided by 3
        frame = fit.get_prediction(np.array([[1.0, x_new]])).summary_frame(alpha=0.05).iloc[0]
        half = stats.t.ppf(0.975, fit.df_resid) * np.sqrt(frame["mean_se"] ** 2 + fit.scale / 3)
        independent += abs(frame["mean"] - truth) <= half
    assert 0.92 <= covered / trials <= 0.98
    assert independent / trials < 0.8


def test_leave_one_bin_out_is_exact_on_a_line():
    jobs = synthetic_jobs(noise=0.0)
    loo = leave_one_bin_out(jobs.assign(mean_L=jobs.mean_L - jobs.seed), ["L"], TARGETS)
    assert np.abs(loo.error).max() < 1e-10 and len(loo) == 5 * len(TARGETS)
    assert np.abs(loo.baseline_error).max() > 0.01  # ignoring complexity does worse


def test_leave_one_bin_out_fits_the_line_through_the_other_bins_means():
    # a seed "not reached" (NaN) leaves its bin with fewer seeds: the line through the jobs would
    # weigh that bin less; the one through the bins' means counts every bin once
    jobs = synthetic_jobs(noise=0.02)
    bins = jobs[(jobs.kind == "bin") & (jobs.measure == "L")]
    jobs.loc[bins.index[(bins.bin == 3) & (bins.seed == bins.seed.min())], "needed_fraction"] = np.nan
    loo = leave_one_bin_out(jobs, ["L"], ["needed"]).set_index("bin")
    bins = jobs[(jobs.kind == "bin") & (jobs.measure == "L")].dropna(subset=["needed_fraction"])
    means = bins.groupby("bin")[["mean_L", "needed_fraction"]].mean()
    for b in (0, 1, 2, 4):  # bin 3's own mean is NaN: it has no actual value to predict
        rest = means.drop(index=b)
        slope, intercept = np.polyfit(rest.mean_L, rest.needed_fraction, 1)
        x = jobs[(jobs.kind == "bin") & (jobs.measure == "L") & (jobs.bin == b)].mean_L.mean()
        assert loo.loc[b, "predicted"] == pytest.approx(intercept + slope * x)
        assert loo.loc[b, "baseline_error"] == pytest.approx(rest.needed_fraction.mean() - means.needed_fraction[b])
        jobs_slope, jobs_intercept = np.polyfit(*bins[bins.bin != b][["mean_L", "needed_fraction"]].T.to_numpy(), 1)
        assert abs(jobs_intercept + jobs_slope * x - (intercept + slope * x)) > 1e-4  # the two lines differ
    assert 3 not in loo.index


def test_held_out_classes_are_predicted_with_intervals():
    jobs = synthetic_jobs(noise=0.0)
    jobs = jobs.assign(mean_L=jobs.mean_L - jobs.seed)  # both seeds at the same x: an exact line
    validation = held_out_validation(jobs, ["L"], TARGETS)
    needed = validation[validation.target == "needed"].set_index("digit")
    assert set(needed.index) == {1, 8}
    for digit, x in ((1, 25.0), (8, 45.0)):
        exact = 0.5 - 0.004 * x
        assert needed.loc[digit, "measured"] == pytest.approx(exact)
        assert needed.loc[digit, "predicted"] == pytest.approx(exact)
        assert needed.loc[digit, "covered"]
        bins = jobs[jobs.kind == "bin"].needed_fraction.mean()
        assert needed.loc[digit, "baseline_error"] == pytest.approx(bins - exact)
    ranking = predictor_ranking(validation)
    assert ranking.query("target == 'needed'").iloc[0].beats_baseline
    # a bin job "not reached" (NaN) is left out of the baseline, not spread through it
    jobs.loc[0, "needed_fraction"] = np.nan
    needed = held_out_validation(jobs, ["L"], ["needed"]).set_index("digit")
    assert needed.loc[1, "baseline"] == pytest.approx(np.nanmean(jobs[jobs.kind == "bin"].needed_fraction))


@pytest.fixture(scope="module")
def tiny_study(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    study = Study.from_dict(TINY_STUDY)
    result = run_study(study, out, data_dir=data_dir, workers=1, progress=False)
    write_study_report(result.run_dir)
    return study, result


def same_table(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    keys = ["measure", "bin", "digit", "seed"]
    a = a.drop(columns=TABLE_COLUMNS_THAT_MAY_DIFFER).sort_values(keys, ignore_index=True)
    b = b.drop(columns=TABLE_COLUMNS_THAT_MAY_DIFFER).sort_values(keys, ignore_index=True)
    return a.equals(b)


def test_tiny_study_end_to_end(tiny_study):
    study, result = tiny_study
    jobs = result.jobs
    assert len(jobs) == 6 + 3 and set(jobs.measure) == {"L", "S", "digit"}
    assert sorted(jobs[jobs.kind == "class"].digit) == [1, 5, 8]
    assert (jobs.n_train == 120).all()  # a held-out class trains on as many sequences as a bin
    parts = jobs[["untouched_fraction", "trained_to_small_fraction", "used_fraction"]].sum(axis=1)
    np.testing.assert_allclose(parts, 1.0)  # the dense network: nothing pruned
    np.testing.assert_allclose(jobs.unused_fraction, jobs.untouched_fraction + jobs.trained_to_small_fraction)
    reached = jobs[jobs.needed_reached]
    assert ((reached.needed_fraction > 0) & (reached.needed_fraction <= 1)).all()
    assert (reached.needed_fraction <= reached.needed_within_density + 1e-12).all()
    assert (reached.needed_fraction >= reached.needed_above_density - 1e-12).all()
    assert jobs[~jobs.needed_reached].needed_fraction.isna().all()
    l_jobs = jobs[jobs.measure == "L"].sort_values("bin")
    assert l_jobs.complexity.is_monotonic_increasing  # bins are ordered by their measure
    assert result.run_dir.name == f"study-{study.hash()}"
    for name in ("config.json", "assignments.csv", "jobs.csv", "ols.csv", "loo.csv", "validation.csv",
                 "seed_slopes.csv", "report.html"):
        assert (result.run_dir / name).exists(), name
    # every job's lottery table carries the three-part decomposition per level
    table = pd.read_csv(result.run_dir / "jobs" / "digit8-seed0" / "results.csv")
    assert {"untouched_fraction", "trained_to_small_fraction", "used_fraction", "pruned_fraction"} <= set(table)


def test_killed_study_resumes_to_the_same_table(tiny_study, data_dir, tmp_path):
    study, result = tiny_study
    import shutil

    copy = tmp_path / result.run_dir.name
    shutil.copytree(result.run_dir, copy)
    # as if killed: one job never finished (its row and its ticket round are gone), no tables, no report
    job = copy / "jobs" / "S-bin1-seed0"
    (job / "job.json").unlink()
    shutil.rmtree(job / "level_1")
    (job / "level_0" / "results.json").unlink()
    for name in ("jobs.csv", "ols.csv", "loo.csv", "validation.csv", "report.html"):
        (copy / name).unlink()
    with pytest.raises(TinydotError, match=r"not a finished study run \(no jobs.csv\); run the same `tinydot study`"):
        load_study(copy)
    with pytest.raises(TinydotError, match="holds an unfinished study run: run the command that made it again"):
        write_report(copy)
    resumed = run_study(study, tmp_path, data_dir=data_dir, workers=1, progress=False)
    assert same_table(resumed.jobs, result.jobs)
    # the run folder itself given for its parent: the same study resumes there, no study inside it (also
    # when it was stopped before its assignments were written)
    (copy / "assignments.csv").unlink()
    again = run_study(study, copy, data_dir=data_dir, workers=1, progress=False)
    assert again.run_dir == copy and same_table(again.jobs, result.jobs)
    assert not (copy / copy.name).exists()
    other = Study.from_dict({**TINY_STUDY, "study": {**TINY_STUDY["study"], "seeds": 2}})
    with pytest.raises(ConfigError, match=f"{copy} is the run folder of another study; --out takes the folder"):
        run_study(other, copy, data_dir=data_dir, workers=1, progress=False)
    for inside in (copy / "figures", next(copy.glob("jobs/*"))):  # a study inside a study or one of its jobs
        expected = f"--out {inside} is inside the study folder {copy.resolve()}; choose a folder outside every study"
        with pytest.raises(ConfigError, match=re.escape(expected)):
            run_study(other, inside, data_dir=data_dir, workers=1, progress=False)
        assert not (inside / f"study-{other.hash()}").exists()
    training = shutil.copytree(job / "level_0", tmp_path / "training")  # another command's run, outside any study
    with pytest.raises(ConfigError, match=re.escape(f"{training} holds a training run; --out takes a folder that "
                                                    "holds study run folders: choose another one")):
        run_study(other, training, data_dir=data_dir, workers=1, progress=False)
    assert not (training / f"study-{other.hash()}").exists()
    with pytest.raises(ConfigError, match="a Ray address is for the ray executor"):
        run_study(study, tmp_path, data_dir=data_dir, workers=1, ray_address="host:1", progress=False)


def test_process_pool_gives_identical_results(tiny_study, data_dir, tmp_path):
    study, result = tiny_study
    pooled = run_study(study, tmp_path, data_dir=data_dir, workers=2, progress=False)
    assert same_table(pooled.jobs, result.jobs)


def test_ray_gives_identical_results(tiny_study, data_dir, tmp_path):
    pytest.importorskip("ray", reason="the ray executor needs the 'ray' extra (installed by make test)")
    study, result = tiny_study
    on_ray = run_study(study, tmp_path, data_dir=data_dir, executor="ray", workers=2, progress=False)
    assert same_table(on_ray.jobs, result.jobs)


def test_predict_from_complexity_alone(tiny_study, test_split):
    _, result = tiny_study
    sevens = test_split.subset(np.flatnonzero(test_split.labels == 7))
    frame = predict(result.run_dir, sevens)
    assert set(frame.target) == set(TARGETS)
    for r in frame.itertuples():
        assert r.ci_low <= r.mean <= r.ci_high
        assert r.pi_low <= r.ci_low and r.ci_high <= r.pi_high
    # the L line's prediction is the line evaluated at the sevens' mean length
    row = frame[(frame.model == "L") & (frame.target == "unused")].iloc[0]
    ols = result.ols[(result.ols.model == "L") & (result.ols.target == "unused")].iloc[0]
    assert row.complexity == pytest.approx(sevens.lengths.mean())
    assert row["mean"] == pytest.approx(ols.intercept + ols.coef * row.complexity)
    needed = frame[frame.target == "needed"]
    if len(needed):
        r = needed.iloc[0]
        assert r.needed_parameters_mean == round(min(max(r["mean"], 0), 1) * r.prunable_parameters)
        assert "x" in r.recommended_model


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [value for name, value in attrs if name in ("src", "href")]


def test_report_is_self_contained_and_generated_from_the_numbers(tiny_study):
    _, result = tiny_study
    html = (result.run_dir / "report.html").read_text()
    parser = _Refs()
    parser.feed(html)
    assert len(parser.refs) >= 4  # histograms, per-bin, OLS and sample figures
    for ref in parser.refs:
        assert ref.startswith("data:image/png;base64,")
        assert base64.b64decode(ref.split(",", 1)[1])[:4] == b"\x89PNG"
    # the verdict is written from the job table: it quotes the prunable count and the needed range
    jobs = result.jobs
    assert f"{int(jobs.prunable.iloc[0]):,} prunable weights" in html
    reached = jobs[(jobs.kind == "bin") & jobs.needed_reached]
    if len(reached):
        assert f"{reached.needed_fraction.min():.3g} to {reached.needed_fraction.max():.3g}" in html
    # the Data section's statistics are over the binned sequences, which its sentence describes
    assignments = pd.read_csv(result.run_dir / "assignments.csv")
    binned = assignments[~assignments.held_class]
    assert 0 < len(binned) < len(assignments)
    assert f'<td class="left">L</td><td>{len(binned):,}</td><td>{round(binned.L.mean(), 3):.3g}</td>' in html


def test_jobs_account_for_their_cost(tiny_study):
    _, result = tiny_study
    jobs = result.jobs
    assert (jobs.cost_cpu_seconds > 0).all() and (jobs.cost_train_flops_dense > 0).all()
    # a job's FLOPs are the sum over its lottery's training runs (each writes its own cost.json)
    job = jobs[(jobs.measure == "L") & (jobs.bin == 0)].iloc[0]
    folder = result.run_dir / "jobs" / "L-bin0-seed0"
    flops = [json.loads(p.read_text())["train_flops_dense"] for p in folder.rglob("cost.json")]
    assert len(flops) == job.levels + 1 and job.cost_train_flops_dense == sum(flops)
    # pruned levels do less work on a sparse kernel than the dense count says
    assert job.cost_train_flops_sparse < job.cost_train_flops_dense
    costs = pd.read_csv(result.run_dir / "costs.csv")
    assert len(costs) == len(jobs) and costs.energy_mode.notna().all()


def test_rightsize_trains_the_predicted_model_beside_the_reference(tiny_study, train, data_dir, monkeypatch):
    import tinydot.rightsize as rightsize
    from tinydot.evaluation import train_classifier

    small_classifier = train_classifier(train.subset(np.arange(1500)), epochs=1)  # the full one takes minutes
    monkeypatch.setattr(rightsize, "load_or_train_classifier", lambda *_: small_classifier)
    study, result = tiny_study
    out = rightsize.run_rightsize(result.run_dir, "train:1", data_dir=data_dir, predictor="L", progress=False)
    table, summary = out["table"].set_index("model"), out["summary"]
    reference, small = table.loc["reference"], table.loc["rightsized"]
    assert reference.n_layers == study.model.n_layers and reference.d_model == study.model.d_model
    predicted = summary["predicted_needed_fraction"]
    assert small.prunable >= min(max(predicted, 0), 1) * reference.prunable  # holds the predicted weights
    assert small.train_flops <= reference.train_flops and small.parameters <= reference.parameters
    assert summary["within_delta"] == bool(small.test_bits_per_step
                                           <= reference.test_bits_per_step * (1 + study.prune.delta))
    assert summary["flops_saved"] == pytest.approx(1 - small.train_flops / reference.train_flops)
    assert summary["nll_change"] == pytest.approx(small.test_bits_per_step / reference.test_bits_per_step - 1)
    assert summary["cpu_saved"] == pytest.approx(1 - small.cpu_seconds / reference.cpu_seconds)  # may be < 0
    assert summary["test_sequences"] == int((load_strokes_test(data_dir).labels == 1).sum())
    html = write_study_report(result.run_dir).read_text()
    assert "what right-sizing saves" in html and "train:1" in html
    assert f"the reference's test NLL ({100 * summary['nll_change']:+.1f}%), with" in html  # the gap, not only delta
    assert ("% less\nmeasured CPU time" if summary["cpu_saved"] >= 0 else "% more\nmeasured CPU time") in html
    folder = out["run_dir"]
    done = (folder / "summary.json").read_bytes()
    refusal = (r"^.*train-1 holds the right-sizing by predictor L; give --predictor L to see \(or finish\) it, or "
               "move that folder away to size by S$")
    with pytest.raises(ConfigError, match=refusal):
        rightsize.run_rightsize(result.run_dir, "train:1", data_dir=data_dir, predictor="S", progress=False)
    assert (folder / "summary.json").read_bytes() == done  # the earlier result stays
    (folder / "summary.json").unlink()  # as if stopped before the end: request.json still names its predictor
    with pytest.raises(ConfigError, match=refusal):
        rightsize.run_rightsize(result.run_dir, "train:1", data_dir=data_dir, predictor="S", progress=False)
    (folder / "request.json").write_text("[1]\n")
    with pytest.raises(ConfigError, match="request.json is damaged \\(no predictor\\); move .* away and run again$"):
        rightsize.run_rightsize(result.run_dir, "train:1", data_dir=data_dir, predictor="S", progress=False)


def load_strokes_test(data_dir):
    from tinydot.data import load_strokes

    return load_strokes("test", data_dir)


def test_compression_targets_of_a_job(tiny_study, train):
    from tinydot.study import COMPRESSION_TARGETS, compression_row

    study, result = tiny_study
    assert set(study.targets) == set(TARGETS)  # off unless asked for
    on = Study.from_dict({**TINY_STUDY, "study": {**TINY_STUDY["study"], "compression_targets": True}})
    assert set(on.targets) == set(TARGETS) | set(COMPRESSION_TARGETS) and on.hash() != study.hash()
    row = compression_row(result.run_dir / "jobs" / "L-bin0-seed0", train.subset(np.arange(200)),
                          train.subset(np.arange(200, 300)), on)
    assert row["neurons_fraction"] == row["neurons_kept"] / on.model.d_mlp and 0 < row["neurons_fraction"] <= 1
    assert row["bits_needed"] in (2, 3, 4, 5, 6, 8, 32) and row["bits_fraction"] == row["bits_needed"] / 32


def test_a_folder_of_another_study_edition_is_refused(tiny_study, tmp_path, test_split):
    import shutil

    _, result = tiny_study
    copy = tmp_path / result.run_dir.name
    shutil.copytree(result.run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config.pop("edition")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(TinydotError, match="written by edition 1 of the study"):
        predict(copy, test_split.subset(np.arange(50)))
    (copy / "config.json").write_text("{}")  # no edition and no study either: not an old edition, damaged
    with pytest.raises(TinydotError, match=r"config.json is damaged \(no study configuration\)"):
        predict(copy, test_split.subset(np.arange(50)))


def test_usage_shares_leave_the_class_embedding_out(tiny_study):
    from tinydot.pruning.usage import usage_fractions

    _, result = tiny_study
    jobs = result.jobs.set_index(["measure", "bin", "digit"])
    for name, key in (("L-bin1-seed0", ("L", 1, -1)), ("digit5-seed0", ("digit", -1, 5))):
        counts = pd.read_csv(result.run_dir / "jobs" / name / "level_0" / "used.csv")
        shares = usage_fractions(counts[counts.tensor != "emb_class.weight"])
        assert jobs.loc[key, "untouched_fraction"] == pytest.approx(shares["untouched_fraction"])
        # with it, a class job would count 9 unseen class rows as untouched, a bin job 3
        assert usage_fractions(counts)["untouched_fraction"] > shares["untouched_fraction"]


def test_rightsize_trains_on_the_train_split_only(tiny_study, data_dir):
    from tinydot.rightsize import run_rightsize

    _, result = tiny_study
    with pytest.raises(ConfigError, match="give train or train:DIGIT"):
        run_rightsize(result.run_dir, "test:1", data_dir=data_dir, progress=False)


def test_clustered_p_value_matches_the_cr1_sandwich():
    """fits.ols_table's p_cluster against the CR1 sandwich written out with numpy: V = c (X'X)^-1
    (sum_g X_g' u_g u_g' X_g) (X'X)^-1, c = G/(G-1) (N-1)/(N-K), and a t test with G-1 degrees of freedom."""
    rng = np.random.default_rng(5)
    rows = []
    for measure in ("L", "S"):
        for b in range(4):
            shared = rng.normal(0, 0.02)  # a data set's effect: its seeds share it
            for seed in range(3):
                x = b + rng.normal(0, 0.1)
                rows.append({"kind": "bin", "measure": measure, "bin": b, "seed": seed, "mean_L": x,
                             "needed_fraction": 0.2 + 0.01 * x + shared + rng.normal(0, 0.005)})
    jobs = pd.DataFrame(rows)
    row = ols_table(jobs, ["L"], ["needed"]).iloc[0]
    X = np.column_stack([np.ones(len(jobs)), jobs["mean_L"]])
    y = jobs["needed_fraction"].to_numpy()
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    u = y - X @ beta
    bread = np.linalg.inv(X.T @ X)
    meat = sum(np.outer(X[g].T @ u[g], X[g].T @ u[g])
               for g in (jobs.groupby(["measure", "bin"]).indices.values()))
    G, N, K = 8, len(jobs), 2
    V = G / (G - 1) * (N - 1) / (N - K) * bread @ meat @ bread
    p = 2 * stats.t.sf(abs(beta[1]) / np.sqrt(V[1, 1]), G - 1)
    assert row["clusters"] == 8
    assert row["p_cluster"] == pytest.approx(p, rel=1e-9)
    assert row["coef"] == pytest.approx(beta[1], rel=1e-9)
    single = ols_table(jobs[jobs.seed == 0], ["L"], ["needed"]).iloc[0]  # one seed: clusters of one job
    assert np.isnan(single["p_cluster"]) and single["clusters"] == 0 and np.isfinite(single["p_value"])


@pytest.mark.parametrize("slope, caveat", [(0.004, True), (0.02, False)])
def test_verdict_says_when_clustering_takes_a_slope_past_5_percent(slope, caveat):
    """Seeds of a data set share its offset: 24 jobs look like 24 points to plain OLS but are 8 data
    sets. With a weak slope the plain p is below 0.05 (0.021) and the clustered one above (0.12): the
    verdict must say the slope is no evidence. With a strong slope both are below and it must not."""
    offset = {"L": [0, 0.03, -0.01, 0.04], "S": [0.02, -0.02, 0.03, 0.01]}
    jobs = pd.DataFrame([{"kind": "bin", "measure": m, "bin": b, "seed": s, "mean_L": b + 0.1 * s,
                          "needed_fraction": 0.2 + slope * b + offset[m][b] + 0.001 * s,
                          "needed_reached": True, "prunable": 1000}
                         for m in ("L", "S") for b in range(4) for s in range(3)])
    ols = ols_table(jobs, ["L"], ["needed"])
    row = ols.iloc[0]
    assert row["p_value"] < 0.05 and (row["p_cluster"] >= 0.05) == caveat
    text = " ".join(study_verdict(jobs, ols, pd.DataFrame(), delta=0.01, targets={"needed": "needed fraction"}))
    assert "Needed fraction rises with L" in text
    assert ("None of them is once errors are clustered by data set" in text) == caveat
    if caveat:
        assert f"smallest p = {row['p_cluster']:.3g}" in text


def test_a_damaged_study_folder_is_refused_by_the_report_as_by_predict(tiny_study, tmp_path):
    import shutil

    _, result = tiny_study
    folder = tmp_path / "copy"
    shutil.copytree(result.run_dir, folder, ignore=shutil.ignore_patterns("jobs"))
    shutil.copytree(result.run_dir / "jobs", folder / "jobs", ignore=shutil.ignore_patterns("level_*"))
    jobs = (folder / "jobs.csv").read_text().splitlines(keepends=True)
    (folder / "jobs.csv").write_text("".join(jobs[:2]))  # the header and one job of several
    with pytest.raises(TinydotError, match=rf"jobs.csv is damaged \(truncated: 1 rows for {len(jobs) - 1} finished"):
        write_report(folder)
    (folder / "jobs.csv").write_text("".join(jobs))
    (folder / "jobs" / "L-bin0-seed0" / "job.json").rename(folder / "job.json")  # a finished job's record gone
    with pytest.raises(TinydotError, match=rf"jobs holds the job.json of only {len(jobs) - 2} of the {len(jobs) - 1} "
                                           r"jobs in jobs.csv \(deleted or moved\?\); re-run `tinydot study`"):
        write_report(folder)
    (folder / "job.json").rename(folder / "jobs" / "L-bin0-seed0" / "job.json")
    (folder / "assignments.csv").write_text("")
    with pytest.raises(TinydotError, match=r"assignments.csv is damaged \(empty\); re-run the command that wrote it"):
        write_report(folder)


def test_a_fitted_table_without_rows_is_drawn_as_empty(tmp_path):
    # a study with no held-out classes writes validation.csv from an empty frame: a bare newline
    from tinydot.report.html import _read_table

    pd.DataFrame().to_csv(tmp_path / "validation.csv", index=False)
    assert (tmp_path / "validation.csv").read_bytes() == b"\n"
    assert _read_table(tmp_path / "validation.csv").empty
    (tmp_path / "ols.csv").write_text("target,predictor\n")  # columns, no rows: kept as they are
    assert list(_read_table(tmp_path / "ols.csv").columns) == ["target", "predictor"]
