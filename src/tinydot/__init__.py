"""tinydot: how over-parameterized is a tiny transformer for its data, and can we tell before training?

The public API, re-exported here. Names are loaded on first use (PEP 562), so `import tinydot`
and the CLI start without importing torch, pandas or matplotlib; `tinydot.train` and
`from tinydot import run_study` work as usual. The CLI (`tinydot ...`) is a thin layer over it.
"""

from __future__ import annotations

import importlib

from tinydot.errors import ConfigError, DataError, TinydotError

__version__ = "0.1.0"

# public name -> the module (layer) that defines it
_API = {
    # data
    "Strokes": "tinydot.data", "load_strokes": "tinydot.data", "length_summary": "tinydot.data",
    "rasterize": "tinydot.data", "rasterize_all": "tinydot.data", "save_grid": "tinydot.data",
    "Sentences": "tinydot.data", "load_sentences": "tinydot.data", "load_all_sentences": "tinydot.data",
    "count_summary": "tinydot.data",
    # configuration and model
    "ModelConfig": "tinydot.config", "TrainConfig": "tinydot.config", "PruneConfig": "tinydot.config",
    "StudyConfig": "tinydot.config", "TinyDOT": "tinydot.model", "TextDOT": "tinydot.model",
    "build_model": "tinydot.model", "load_model": "tinydot.checkpoint",
    # pure computations
    "DOMAINS": "tinydot.domains", "get_domain": "tinydot.domains", "domain_of": "tinydot.domains",
    "measure_all": "tinydot.complexity", "quantile_bins": "tinydot.complexity", "prune": "tinydot.pruning",
    "random_mask": "tinydot.pruning", "sample": "tinydot.sampling", "evaluate_nll": "tinydot.evaluation",
    "evaluate": "tinydot.evaluation", "fit_ols": "tinydot.fits", "cross_domain_predictions": "tinydot.fits",
    "prunable_count": "tinydot.sizing", "quantize_model": "tinydot.quantization",
    "remove_units": "tinydot.pruning.structured", "iterative_removal": "tinydot.pruning.structured",
    # stages
    "train": "tinydot.training", "run_lottery": "tinydot.lottery", "Study": "tinydot.study",
    "run_study": "tinydot.study", "predict": "tinydot.study", "RedundancyConfig": "tinydot.redundancy",
    "run_redundancy": "tinydot.redundancy", "write_complexity": "tinydot.runs", "write_hessian": "tinydot.runs",
    "write_svcca": "tinydot.runs", "save_samples": "tinydot.runs", "run_rightsize": "tinydot.rightsize",
    "run_compress": "tinydot.compress", "run_quantize": "tinydot.compress", "load_packed": "tinydot.compress",
    # report
    "write_report": "tinydot.report.pages", "write_study_report": "tinydot.report.html",
    "write_comparison": "tinydot.report.html",
}

__all__ = ["ConfigError", "DataError", "TinydotError", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinydot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
