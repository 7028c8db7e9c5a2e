"""The study: configs, assignment, OLS against reference formulas, an end-to-end tiny run on real
data with resume, executors that agree, prediction, and the HTML report."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tinydot.config import StudyConfig
from tinydot.errors import ConfigError
from tinydot.fits import leave_one_bin_out, ols_table
from tinydot.report.html import write_study_report
from tinydot.study import TARGETS, Study, assign, predict, run_study

TINY_STUDY = {
    "study": {"measures": ["L", "S"], "bins": 3, "seeds": 1, "max_train_per_bin": 120},
    "model": {"n_layers": 1, "d_model": 16, "d_mlp": 32},
    "train": {"steps": 8, "tokens_per_batch": 1200, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 4},
    "prune": {"fraction": 0.3},
}
TABLE_COLUMNS_THAT_MAY_DIFFER = ["seconds"]  # wall time is not a result


def test_presets_and_pinned_hashes():
    assert Study.preset("quick").study.bins == 5 and Study.preset("paper").study.seeds == 2
    # run folders are named by these hashes: changing them renames existing runs
    assert Study().hash() == Study.from_dict({}).hash()
    assert len(Study.preset("quick").hash()) == 10
    assert Study.from_dict(TINY_STUDY).hash() == Study.from_dict(json.loads(json.dumps(TINY_STUDY))).hash()
    assert Study.from_dict(TINY_STUDY).hash() != Study.preset("quick").hash()


@pytest.mark.parametrize("values,message", [
    ({"study": {"bins": 2}}, "bins must be an integer >= 3"),
    ({"study": {"measures": ["Q"]}}, "unknown study measure 'Q'"),
    ({"study": {"held_out_fraction": 0.7}}, "held_out_fraction must be in"),
    ({"studdy": {}}, "unknown study config section"),
    ({"model": {"d_model": -1}}, "d_model must be a positive integer"),
])
def test_bad_study_config(values, message):
    with pytest.raises(ConfigError, match=message):
        Study.from_dict(values)
    with pytest.raises(ConfigError, match="unknown preset"):
        Study.preset("slow")


def test_assignment_bins_and_held_out_share(train):
    sample = train.subset(np.arange(3000))
    table = assign(sample, StudyConfig(measures=("L", "S"), bins=5, held_out_fraction=0.1))
    for m in ("L", "S"):
        counts = table.groupby(f"bin_{m}").size()
        assert counts.tolist() == [600] * 5
        assert table.groupby(f"bin_{m}")[f"held_out_{m}"].sum().tolist() == [60] * 5


def synthetic_jobs(slope=0.02, intercept=0.1, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for m, xs in (("L", [20.0, 30.0, 40.0, 50.0, 60.0]), ("S", [0.5, 0.7, 0.8, 0.9, 0.95])):
        for b, x in enumerate(xs):
            for s in range(2):
                y = intercept + slope * x + noise * rng.standard_normal()
                rows.append({"measure": m, "bin": b, "seed": s, "complexity": x, "mean_L": 20 + 10 * b + s,
                             "mean_S": 0.5 + 0.1 * b - 0.01 * s, "dense_unused_fraction": y,
                             "round1_unused_fraction": y + 0.2})
    return pd.DataFrame(rows)


def test_ols_matches_the_textbook_formulas():
    jobs = synthetic_jobs(noise=0.01)
    ols = ols_table(jobs, ["L", "S"], TARGETS)
    row = ols[(ols.model == "L") & (ols.target == "dense")].iloc[0]
    part = jobs[jobs.measure == "L"]
    x, y = part.complexity.to_numpy(), part.dense_unused_fraction.to_numpy()
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    se = np.sqrt(residuals @ residuals / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
    t = stats.t.ppf(0.975, len(x) - 2)
    assert row.coef == pytest.approx(slope) and row.intercept == pytest.approx(intercept)
    assert row.ci_low == pytest.approx(slope - t * se) and row.ci_high == pytest.approx(slope + t * se)
    assert row.p_value == pytest.approx(2 * stats.t.sf(abs(slope / se), len(x) - 2))
    assert row.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert set(ols.model) == {"L", "S", "L+S"} and row.n == 10


def test_leave_one_bin_out_is_exact_on_a_line():
    loo = leave_one_bin_out(synthetic_jobs(noise=0.0), ["L", "S"], TARGETS)
    assert np.abs(loo.error).max() < 1e-10
    assert np.abs(loo.baseline_error).max() > 0.01  # ignoring complexity does worse


@pytest.fixture(scope="module")
def tiny_study(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    study = Study.from_dict(TINY_STUDY)
    result = run_study(study, out, data_dir=data_dir, workers=1, progress=False)
    write_study_report(result.run_dir)
    return study, result


def same_table(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    keys = ["measure", "bin", "seed"]
    a = a.drop(columns=TABLE_COLUMNS_THAT_MAY_DIFFER).sort_values(keys, ignore_index=True)
    b = b.drop(columns=TABLE_COLUMNS_THAT_MAY_DIFFER).sort_values(keys, ignore_index=True)
    return a.equals(b)


def test_tiny_study_end_to_end(tiny_study):
    study, result = tiny_study
    jobs = result.jobs
    assert len(jobs) == 6 and set(jobs.measure) == {"L", "S"}
    assert (jobs.n_train == 120).all()
    # the first round prunes 30% of the prunable weights, so at least that share is unused
    assert (jobs.round1_unused_fraction >= 0.3 - 1e-6).all()
    assert (jobs.dense_unused_fraction < jobs.round1_unused_fraction).all()
    l_jobs = jobs[jobs.measure == "L"].sort_values("bin")
    assert l_jobs.complexity.is_monotonic_increasing  # bins are ordered by their measure
    assert result.run_dir.name == f"study-{study.hash()}"
    for name in ("config.json", "assignments.csv", "jobs.csv", "ols.csv", "loo.csv", "report.html"):
        assert (result.run_dir / name).exists(), name


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
    for name in ("jobs.csv", "ols.csv", "loo.csv", "report.html"):
        (copy / name).unlink()
    resumed = run_study(study, tmp_path, data_dir=data_dir, workers=1, progress=False)
    assert same_table(resumed.jobs, result.jobs)


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
    assert set(frame.model) == {"L", "S", "L+S"} and set(frame.target) == {"dense", "round1"}
    for r in frame.itertuples():
        assert r.ci_low <= r.predicted_unused_fraction <= r.ci_high
        assert r.pi_low <= r.ci_low and r.ci_high <= r.pi_high
        assert r.needed_parameters == pytest.approx(r.prunable_parameters * (1 - r.predicted_unused_fraction))
    # the L line's prediction is the line evaluated at the sevens' mean length
    row = frame[(frame.model == "L") & (frame.target == "dense")].iloc[0]
    ols = result.ols[(result.ols.model == "L") & (result.ols.target == "dense")].iloc[0]
    assert row.complexity == pytest.approx(sevens.lengths.mean())
    assert row.predicted_unused_fraction == pytest.approx(ols.intercept + ols.coef * row.complexity)


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
    # the verdict quotes the fitted slope of L for the dense target
    ols = result.ols[(result.ols.model == "L") & (result.ols.target == "dense")].iloc[0]
    assert f"{abs(ols.coef):.3g} per unit of L" in html
