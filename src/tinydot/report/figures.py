"""Pure functions that build matplotlib Figures; callers save them (no pyplot, no global state)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def complexity_histograms(table: pd.DataFrame, binned: str, edges: pd.DataFrame) -> Figure:
    """One histogram per measure column of `table`; the `binned` measure shows its bin edges."""
    from tinydot.complexity import MEASURES

    measures = [m for m in MEASURES if m in table.columns]
    ncols = 4
    nrows = int(np.ceil(len(measures) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, m in zip(axes, measures):
        values = table[m].to_numpy(dtype=float)
        discrete = np.allclose(values, np.round(values)) and np.ptp(values) < 200
        bins = np.arange(values.min() - 0.5, values.max() + 1.5) if discrete else 60
        ax.hist(values, bins=bins, color="#4c72b0" if m != binned else "#dd8452")
        if m == binned:
            for high in edges["high"].to_numpy()[:-1]:
                ax.axvline(high, color="black", lw=1, ls="--")
            ax.set_title(f"{m}  ({len(edges)} quantile bins)", fontsize=9)
        else:
            ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(measures):]:
        ax.set_axis_off()
    return fig
