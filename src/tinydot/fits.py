"""The study's fits: OLS lines of each target against each complexity measure, errors on bins left
out, and predictions for data the fits never saw, with intervals.

Pure computations on a job table, one row per job: `kind` ("bin" for a complexity bin, "class" for
a held-out digit class, "group" for a held-out group of text sentences), `measure` / `bin` (the
binning), `digit` (strokes) or `group` (text) naming the held-out job, `seed`, `mean_<m>` (the job's
mean of measure m) and `<target>_fraction` per target. Lines are fitted on the bin jobs only; rows
whose target is NaN (a needed fraction not reached within the levels) are left out of the fit.
No files, no figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HELD_OUT_COLUMNS = {"class": "digit", "group": "group"}  # kind of a held-out job -> the column naming it


def held_out_column(jobs: pd.DataFrame) -> str:
    """The column that names a job table's held-out jobs: digit (strokes) or group (text)."""
    return "group" if "group" in jobs and "digit" not in jobs else "digit"


def fit_ols(x, y):
    """statsmodels OLS of y on [1, x] (x may have several columns)."""
    import statsmodels.api as sm  # here, not above: 1-2 s of import that a refused command need not pay

    return sm.OLS(np.asarray(y, dtype=float), sm.add_constant(np.asarray(x, dtype=float), has_constant="add")).fit()


def _bins(jobs: pd.DataFrame) -> pd.DataFrame:
    return jobs[jobs["kind"] == "bin"] if "kind" in jobs else jobs


def fit_ols_clustered(x, y, groups):
    """OLS of y on [1, x] with cluster-robust (CR1) standard errors over `groups` and t tests with
    G - 1 degrees of freedom (statsmodels' small-sample corrections): the jobs of one data set (its
    seeds) are not independent observations, so their errors may be correlated."""
    import statsmodels.api as sm  # as in fit_ols

    codes = pd.factorize(pd.Series(list(groups)))[0]
    return sm.OLS(np.asarray(y, dtype=float), sm.add_constant(np.asarray(x, dtype=float), has_constant="add")).fit(
        cov_type="cluster", cov_kwds={"groups": codes}, use_t=True)


def data_sets(part: pd.DataFrame) -> list:
    """Each job's data set: (measure, bin) for bin jobs (their seeds train on draws of the same
    sequences), else the job itself."""
    return list(zip(part["measure"], part["bin"])) if {"measure", "bin"} <= set(part) else list(range(len(part)))


def is_constant(y) -> bool:
    """Whether a target takes one value in every job. Its line is flat (slope 0) and fits it exactly,
    so a slope's p-value and R^2 are 0 / 0: undefined, not the p-value of OLS's rounding noise."""
    y = np.asarray(y, dtype=float)
    return len(y) > 0 and bool((y == y[0]).all())


def exact_mean(values) -> float:
    """The mean of `values`, NaN skipped (a job "not reached"), as pandas takes it; exactly their value
    when they are all equal (summing n equal floats and dividing by n can miss it by a rounding step,
    which would show as an error of 1e-17)."""
    values = pd.Series(np.asarray(values, dtype=float))
    present = values.dropna()
    return float(present.iloc[0]) if is_constant(present) else float(values.mean())


def _fit_rows(fit, model: str, target: str, terms, clustered=None, clusters: int = 0,
              constant: bool = False) -> list[dict]:
    if constant:  # see is_constant
        n_coef = len(terms) + 1
        coef, ci, p, r2 = np.zeros(n_coef), np.zeros((n_coef, 2)), np.full(n_coef, np.nan), np.nan
    else:
        coef, ci, p, r2 = fit.params, fit.conf_int(0.05), fit.pvalues, fit.rsquared
    rows = [{"model": model, "target": target, "term": term, "coef": coef[k], "ci_low": ci[k][0],
             "ci_high": ci[k][1], "p_value": p[k], "r2": r2, "n": int(fit.nobs),
             "intercept": fit.params[0]} for k, term in enumerate(terms, start=1)]
    for k, row in enumerate(rows, start=1):
        row["p_cluster"] = float(clustered.pvalues[k]) if clustered is not None else np.nan
        row["clusters"] = clusters if clustered is not None else 0
    return rows


def ols_table(jobs: pd.DataFrame, predictors, targets) -> pd.DataFrame:
    """Per target: slope, 95% CI, p-value and R^2 of the target against each predictor's job mean,
    and one joint model with every predictor (when the jobs outnumber its coefficients + 1).
    Single-predictor rows also carry `p_cluster`, the slope's p-value with errors clustered by data
    set (measure, bin: `fit_ols_clustered`) over `clusters` clusters: NaN with fewer than 3, and NaN
    when every data set is a single job (one seed), where "clusters" of one job give only
    heteroskedasticity-robust errors, which are too small at a handful of jobs.
    A target equal in every job gets slope 0 and NaN p-values and R^2 (`is_constant`)."""
    bins, rows = _bins(jobs), []
    for target in targets:
        part = bins[np.isfinite(bins[f"{target}_fraction"])]
        y = part[f"{target}_fraction"]
        groups, constant = data_sets(part), is_constant(y)
        for m in predictors:
            if len(part) >= 3:
                clustered = (fit_ols_clustered(part[f"mean_{m}"], y, groups)
                             if 3 <= len(set(groups)) < len(groups) and not constant else None)
                rows += _fit_rows(fit_ols(part[f"mean_{m}"], y), m, target, [m], clustered, len(set(groups)), constant)
        if len(predictors) > 1 and len(part) > len(predictors) + 2:
            rows += _fit_rows(fit_ols(part[[f"mean_{m}" for m in predictors]], y), "joint", target, predictors,
                              constant=constant)
    return pd.DataFrame(rows)


def seed_slopes(jobs: pd.DataFrame, predictors, targets) -> pd.DataFrame:
    """The OLS slope of every (target, predictor) fitted on each seed's bin jobs alone: its spread
    over seeds says more than one p-value (float order, and so the numbers, differ between CPUs).
    A seed whose target is equal in every job has slope 0 and a NaN p-value (`is_constant`)."""
    bins, rows = _bins(jobs), []
    for seed, part in bins.groupby("seed"):
        for target in targets:
            fine = part[np.isfinite(part[f"{target}_fraction"])]
            constant = is_constant(fine[f"{target}_fraction"])
            for m in predictors:
                if len(fine) >= 3:
                    fit = fit_ols(fine[f"mean_{m}"], fine[f"{target}_fraction"])
                    rows.append({"seed": int(seed), "target": target, "predictor": m,
                                 "slope": 0.0 if constant else fit.params[1],
                                 "p_value": np.nan if constant else fit.pvalues[1], "n": int(fit.nobs)})
    return pd.DataFrame(rows)


def _mean_of_bins(jobs: pd.DataFrame, y_col: str) -> float:
    """The mean over bins of each bin's mean (exact for a constant target: `exact_mean`)."""
    return float(jobs[y_col].iloc[0]) if is_constant(jobs[y_col]) else float(jobs.groupby("bin")[y_col].mean().mean())


def leave_one_bin_out(jobs: pd.DataFrame, predictors, targets) -> pd.DataFrame:
    """Each bin (all its seeds) predicted by the line fitted to the other bins of the same binning
    measure, against the no-complexity baseline (their mean). Bins of another binning measure stay
    out of the fit: they share most of their sequences with the bin left out. The line goes through
    the bins' means (`Line`, as every prediction does), and the baseline is the mean of those means,
    so a bin with a seed "not reached" counts once, like the others. Two remaining bins suffice for a
    line's prediction (no interval is used)."""
    bins, rows = _bins(jobs), []
    groups = bins.groupby(["measure", "bin"]).groups
    for target in targets:
        y_col = f"{target}_fraction"
        for m in predictors:
            for (measure, b), index in groups.items():
                held = bins.loc[index]
                rest = bins[(bins["measure"] == measure) & (bins["bin"] != b)]
                rest = rest[np.isfinite(rest[y_col])]
                actual = exact_mean(held[y_col]) if np.isfinite(held[y_col]).all() else np.nan
                if rest["bin"].nunique() < 2 or not np.isfinite(actual):
                    continue
                x = held[f"mean_{m}"].mean()
                predicted = Line(rest[[f"mean_{m}"]], rest[y_col], data_sets(rest)).mean_at([x])
                rows.append({"predictor": m, "target": target, "measure": measure, "bin": int(b), "x": x,
                             "actual": actual, "predicted": predicted, "error": predicted - actual,
                             "baseline_error": _mean_of_bins(rest, y_col) - actual})
    return pd.DataFrame(rows)


def loo_summary(loo: pd.DataFrame) -> pd.DataFrame:
    """Mean absolute and root-mean-square leave-one-bin-out error per (predictor, target), with the baseline's."""
    return loo.groupby(["predictor", "target"], sort=False).agg(
        mae=("error", lambda e: float(np.abs(e).mean())),
        rmse=("error", lambda e: float(np.sqrt((e ** 2).mean()))),
        baseline_mae=("baseline_error", lambda e: float(np.abs(e).mean())), bins=("error", "size")).reset_index()


class Line:
    """An OLS line of y on x (one column per predictor) through the means of data sets, for predictions.

    `groups` names each row's data set. The jobs of one data set (its seeds) share its sequences,
    so their errors are correlated (in the stroke paper study the needed fraction's intraclass
    correlation is ~0.4, the unused share's ~0.95): they are not independent points, and a new data
    set's seeds do not average its own deviation away. So the line goes through the data sets'
    means, one point each (t with data sets - coefficients degrees of freedom), and the prediction
    interval of the mean of `observations` jobs of one new data set has the variance
        se_line^2 + max(s2_sets - s2_seeds / k, 0) + s2_seeds / observations
    where s2_sets, the means' residual variance, holds the data set's own deviation plus the seed
    noise of a mean of k seeds (k: the harmonic mean of seeds per data set), and s2_seeds is the
    pooled seed-to-seed variance within data sets (a one-way ANOVA). Without `groups` every row is its
    own data set: plain OLS and the textbook interval of one new row (then `observations` cannot
    shrink it: nothing tells a data set's deviation from its seeds' noise). A target equal in every
    job (`is_constant`) is predicted exactly: slope 0, that value, intervals of zero width (OLS
    would give the same up to rounding noise, which then ranks predictors by noise)."""

    def __init__(self, x: pd.DataFrame, y, groups=None):
        x = pd.DataFrame(x).reset_index(drop=True)
        y = np.asarray(y, dtype=float)
        labels = pd.factorize(pd.Series(list(groups)))[0] if groups is not None else np.arange(len(y))
        sets = x.assign(_y=y).groupby(labels)
        means, seeds = sets.mean(), sets.size().to_numpy()
        self.fit = fit_ols(means[list(x.columns)], means["_y"])
        self.within, self.seeds = 0.0, 1.0  # s2_seeds and k
        if (seeds > 1).any():
            deviations = y - means["_y"].to_numpy()[labels]
            self.within = float(deviations @ deviations / (len(y) - len(seeds)))
            self.seeds = len(seeds) / float((1 / seeds).sum())
        self.low, self.high = means[list(x.columns)].min().to_numpy(), means[list(x.columns)].max().to_numpy()
        self.constant = float(y[0]) if is_constant(y) else None
        self.coef = (np.array([self.constant, *np.zeros(x.shape[1])]) if self.constant is not None
                     else np.asarray(self.fit.params, dtype=float))  # intercept, then one slope per column

    def mean_at(self, point) -> float:
        """The line's value at `point` (one value per column of x)."""
        return float(self.coef[0] + self.coef[1:] @ np.atleast_1d(np.asarray(point, dtype=float)))

    def predict(self, point, observations: int = 1) -> dict:
        """At `point` (one value per column of x): the line's mean, its 95% CI, the 95% prediction
        interval of the mean of `observations` new jobs of one new data set, and whether the point
        lies inside the range of the data sets the line went through."""
        from scipy import stats  # as statsmodels in fit_ols (which has imported it by now anyway)

        point = np.atleast_1d(np.asarray(point, dtype=float))  # one value per column; a number for one column
        inside = bool(np.all(point >= self.low) and np.all(point <= self.high))
        if self.constant is not None:
            c = self.constant
            return {"mean": c, "ci_low": c, "ci_high": c, "pi_low": c, "pi_high": c, "within_range": inside}
        frame = self.fit.get_prediction(np.array([[1.0, *point]])).summary_frame(alpha=0.05).iloc[0]
        new = max(self.fit.scale - self.within / self.seeds, 0.0) + self.within / observations
        half = stats.t.ppf(0.975, self.fit.df_resid) * np.sqrt(frame["mean_se"] ** 2 + new)
        return {"mean": frame["mean"], "ci_low": frame["mean_ci_lower"], "ci_high": frame["mean_ci_upper"],
                "pi_low": frame["mean"] - half, "pi_high": frame["mean"] + half, "within_range": inside}


def predict_line(x: pd.DataFrame, y, point, observations: int = 1, groups=None) -> dict:
    """`Line(x, y, groups).predict(point, observations)`: one prediction with its intervals."""
    return Line(x, y, groups).predict(point, observations)


def predict_targets(jobs: pd.DataFrame, predictors, targets, means: dict, observations: int = 1) -> pd.DataFrame:
    """Every target predicted at the complexity `means` ({measure: value}) by each predictor's line
    (and the joint model when it can be fitted), from the bin jobs' data sets (`predict_line`):
    the interval is that of the mean of `observations` jobs (seeds) of one new data set."""
    bins, rows = _bins(jobs), []
    for target in targets:
        part = bins[np.isfinite(bins[f"{target}_fraction"])]
        groups = data_sets(part)
        models = [(m, [m]) for m in predictors]
        if len(predictors) > 1 and len(set(groups)) > len(predictors) + 2:
            models.append(("joint", list(predictors)))
        for name, terms in models:
            if len(set(groups)) < 3:
                continue
            line = predict_line(part[[f"mean_{m}" for m in terms]], part[f"{target}_fraction"],
                                [means[m] for m in terms], observations, groups)
            rows.append({"model": name, "target": target, **line,
                         "complexity": means[terms[0]] if len(terms) == 1 else np.nan})
    return pd.DataFrame(rows)


def held_out_validation(jobs: pd.DataFrame, predictors, targets) -> pd.DataFrame:
    """Each held-out class (or text group): its targets predicted from its complexity alone by the bin jobs' lines
    (95% prediction interval), against what its own jobs measured (mean over seeds); whether the
    interval covered the measurement; and the error of the baseline that ignores complexity (the
    bin jobs' mean)."""
    if "kind" not in jobs or not jobs["kind"].isin(list(HELD_OUT_COLUMNS)).any():
        return pd.DataFrame()
    key = held_out_column(jobs)
    bins, classes, rows = _bins(jobs), jobs[jobs["kind"].isin(list(HELD_OUT_COLUMNS))], []
    for digit, part in classes.groupby(key):
        means = {m: float(part[f"mean_{m}"].mean()) for m in predictors}
        predicted = predict_targets(jobs, predictors, targets, means, observations=len(part))
        for r in predicted.itertuples():
            measured = part[f"{r.target}_fraction"]
            actual = exact_mean(measured) if np.isfinite(measured).all() else np.nan
            baseline = exact_mean(bins[f"{r.target}_fraction"])
            rows.append({key: int(digit), "target": r.target, "predictor": r.model,
                         "complexity": r.complexity, "predicted": r.mean, "pi_low": r.pi_low,
                         "pi_high": r.pi_high, "measured": actual, "measured_sd": float(measured.std(ddof=1))
                         if len(measured) > 1 else np.nan, "seeds": len(measured),
                         "covered": bool(r.pi_low <= actual <= r.pi_high) if np.isfinite(actual) else False,
                         "error": r.mean - actual, "baseline": baseline, "baseline_error": baseline - actual,
                         "within_range": r.within_range})
    return pd.DataFrame(rows)


def predictor_ranking(validation: pd.DataFrame) -> pd.DataFrame:
    """Predictors ranked per target by mean absolute error on the held-out classes (lowest first),
    with the ignore-complexity baseline's error and the share of intervals that covered."""
    if validation.empty:
        return pd.DataFrame()
    fine = validation[np.isfinite(validation["error"])]
    table = fine.groupby(["target", "predictor"], sort=False).agg(
        mae=("error", lambda e: float(np.abs(e).mean())),
        baseline_mae=("baseline_error", lambda e: float(np.abs(e).mean())),
        covered=("covered", "mean"), classes=(held_out_column(validation), "nunique")).reset_index()
    table["beats_baseline"] = table["mae"] < table["baseline_mae"]
    table["rank"] = table.groupby("target")["mae"].rank(method="min").astype(int)
    return table.sort_values(["target", "rank"]).reset_index(drop=True)


# --------------------------------------------------------------------------- across domains

# the columns of the two cross-domain tables (kept when a table is empty, so its CSV still has a header)
CROSS_DOMAIN_COLUMNS = ("direction", "predictor", "target", "kind", "measure", "bin", "held_out", "seed", "x",
                        "actual", "predicted", "pi_low", "pi_high", "covered", "within_range", "error", "baseline",
                        "baseline_error", "source_mean_error", "slope", "intercept", "n_fit")
CROSS_DOMAIN_SUMMARY_COLUMNS = ("direction", "predictor", "target", "slope", "intercept", "n_fit", "n_predicted",
                                "mae", "rmse", "baseline_mae", "source_mean_mae", "coverage", "within_range",
                                "impossible", "beats_baseline")


def cross_domain_predictions(source: pd.DataFrame, target: pd.DataFrame, predictors, target_name: str = "needed",
                             direction: str = "") -> pd.DataFrame:
    """One study's line predicting another study's jobs (e.g. strokes -> text).

    Per predictor m (a measure both job tables record, e.g. L or compressed_bytes): the OLS line of
    `<target_name>_fraction` on `mean_<m>` through the data sets of `source`'s bin jobs (finite
    targets only; `Line`) predicts every job of `target` with a finite target (bins and held-out
    jobs) at its own mean_<m>, with the 95% prediction interval of one job of a new data set.
    Baselines that ignore the line: the target jobs' own mean (`baseline`, the best constant for
    them: a line must beat it to be worth anything) and the source bin jobs' mean (`source_mean`).
    No rows unless `source` has 3 data sets of bin jobs with a finite target and `target` 3 jobs with
    one (below that, the target's own mean would be one or two jobs' values: no baseline to beat).
    One row per (predictor, target job); `held_out` names a held-out job's digit or text group (-1 for
    a bin job).
    """
    y_col, rows = f"{target_name}_fraction", []
    fit_jobs = _bins(source)
    fit_jobs = fit_jobs[np.isfinite(fit_jobs[y_col])]
    predicted = target[np.isfinite(target[y_col])]
    if len(set(data_sets(fit_jobs))) < 3 or len(predicted) < 3:  # a line, and a baseline that is not one job
        return pd.DataFrame(columns=list(CROSS_DOMAIN_COLUMNS))
    baseline, held_out = exact_mean(predicted[y_col]), predicted[held_out_column(target)].to_numpy()
    for m in predictors:
        fitted = Line(fit_jobs[[f"mean_{m}"]], fit_jobs[y_col], data_sets(fit_jobs))
        for r, held in zip(predicted.itertuples(), held_out):
            point = getattr(r, f"mean_{m}")
            line = fitted.predict([point])
            actual = getattr(r, y_col)
            rows.append({"direction": direction, "predictor": m, "target": target_name, "kind": r.kind,
                         "measure": r.measure, "bin": r.bin, "held_out": int(held), "seed": r.seed, "x": point,
                         "actual": actual,
                         "predicted": line["mean"], "pi_low": line["pi_low"], "pi_high": line["pi_high"],
                         "covered": bool(line["pi_low"] <= actual <= line["pi_high"]),
                         "within_range": line["within_range"], "error": line["mean"] - actual,
                         "baseline": baseline, "baseline_error": baseline - actual,
                         "source_mean_error": exact_mean(fit_jobs[y_col]) - actual,
                         "slope": fitted.coef[1], "intercept": fitted.coef[0],
                         "n_fit": len(fit_jobs)})
    return pd.DataFrame(rows, columns=list(CROSS_DOMAIN_COLUMNS))


def cross_domain_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per (direction, predictor, target): the line, its mean absolute and RMS error on the other
    study's jobs, the two baselines' mean absolute errors, PI coverage, the share of jobs inside
    the fitted range of x, the share of predictions outside [0, 1] (`impossible`: no fraction can be
    there; a line carried far beyond its range), and whether the line beats the other study's own mean."""
    if predictions.empty:
        return pd.DataFrame(columns=list(CROSS_DOMAIN_SUMMARY_COLUMNS))
    table = predictions.groupby(["direction", "predictor", "target"], sort=False).agg(
        slope=("slope", "first"), intercept=("intercept", "first"), n_fit=("n_fit", "first"),
        n_predicted=("error", "size"), mae=("error", lambda e: float(np.abs(e).mean())),
        rmse=("error", lambda e: float(np.sqrt((e ** 2).mean()))),
        baseline_mae=("baseline_error", lambda e: float(np.abs(e).mean())),
        source_mean_mae=("source_mean_error", lambda e: float(np.abs(e).mean())),
        coverage=("covered", "mean"), within_range=("within_range", "mean"),
        impossible=("predicted", lambda p: float(((p < 0) | (p > 1)).mean()))).reset_index()
    table["beats_baseline"] = table["mae"] < table["baseline_mae"]
    return table[list(CROSS_DOMAIN_SUMMARY_COLUMNS)]
