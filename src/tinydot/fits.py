"""The study's fits: OLS lines of a target against complexity, and leave-one-bin-out errors.

Pure computations on a job table (one row per (measure, bin, seed) job): no files, no figures.
`targets` maps a target name to its label; the job table has a column `<target>_unused_fraction`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm


def fit_ols(x, y):
    """statsmodels OLS of y on [1, x] (x may have several columns)."""
    return sm.OLS(np.asarray(y, dtype=float), sm.add_constant(np.asarray(x, dtype=float), has_constant="add")).fit()


def ols_table(jobs: pd.DataFrame, measures, targets) -> pd.DataFrame:
    """Slope, 95% CI, p-value and R^2 of each target vs bin complexity, per measure; plus one model
    with the mean L and mean S of every job together."""
    rows = []
    for target in targets:
        y_col = f"{target}_unused_fraction"
        for m in measures:
            part = jobs[jobs["measure"] == m]
            fit = fit_ols(part["complexity"], part[y_col])
            low, high = fit.conf_int(0.05)[1]
            rows.append({"model": m, "target": target, "term": m, "coef": fit.params[1], "ci_low": low,
                         "ci_high": high, "p_value": fit.pvalues[1], "r2": fit.rsquared, "n": int(fit.nobs),
                         "intercept": fit.params[0]})
        fit = fit_ols(jobs[["mean_L", "mean_S"]], jobs[y_col])
        for k, term in enumerate(("L", "S"), start=1):
            low, high = fit.conf_int(0.05)[k]
            rows.append({"model": "L+S", "target": target, "term": term, "coef": fit.params[k], "ci_low": low,
                         "ci_high": high, "p_value": fit.pvalues[k], "r2": fit.rsquared, "n": int(fit.nobs),
                         "intercept": fit.params[0]})
    return pd.DataFrame(rows)


def leave_one_bin_out(jobs: pd.DataFrame, measures, targets) -> pd.DataFrame:
    """Predict each bin's mean target from a line fitted to the other bins, and compare with the
    no-complexity baseline (the other bins' mean)."""
    rows = []
    for target in targets:
        y_col = f"{target}_unused_fraction"
        for m in measures:
            part = jobs[jobs["measure"] == m]
            for b in sorted(part["bin"].unique()):
                rest, held = part[part["bin"] != b], part[part["bin"] == b]
                fit = fit_ols(rest["complexity"], rest[y_col])
                x = held["complexity"].mean()
                predicted = fit.params[0] + fit.params[1] * x
                actual = held[y_col].mean()
                rows.append({"measure": m, "target": target, "bin": int(b), "complexity": x, "actual": actual,
                             "predicted": predicted, "error": predicted - actual,
                             "baseline_error": rest[y_col].mean() - actual})
    return pd.DataFrame(rows)


def loo_summary(loo: pd.DataFrame) -> pd.DataFrame:
    """Mean absolute and root-mean-square leave-one-bin-out error per (measure, target), with the baseline's."""
    return loo.groupby(["measure", "target"], sort=False).agg(
        mae=("error", lambda e: float(np.abs(e).mean())),
        rmse=("error", lambda e: float(np.sqrt((e ** 2).mean()))),
        baseline_mae=("baseline_error", lambda e: float(np.abs(e).mean()))).reset_index()


def predict_line(x: pd.DataFrame, y, point) -> dict:
    """The OLS prediction of y at `point` (one value per column of x): mean, 95% CI and 95% PI,
    and whether the point lies inside the range of x the line was fitted on."""
    fit = fit_ols(x, y)
    frame = fit.get_prediction(np.array([[1.0, *point]])).summary_frame(alpha=0.05).iloc[0]
    low, high = x.min().to_numpy(), x.max().to_numpy()
    inside = bool(np.all(np.asarray(point) >= low) and np.all(np.asarray(point) <= high))
    return {"mean": frame["mean"], "ci_low": frame["mean_ci_lower"], "ci_high": frame["mean_ci_upper"],
            "pi_low": frame["obs_ci_lower"], "pi_high": frame["obs_ci_upper"], "within_range": inside}
