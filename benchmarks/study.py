"""Study wall time: the quick preset and one of its jobs, with the training step before issue 15 and now.

The baseline is the old step kept in benchmarks/train_throughput.py (the old `TinyDOT.nll`, for-loop
AdamW, clipping one tensor at a time), patched into tinydot in every worker; `new` is tinydot as
it is. Both runs do the same work on the same data (same seeds, same bins); their numbers differ
in the last bits (another summation order), so the levels each job trains may differ too: the
printed steps say how many training steps each run took, and the ratio that counts is seconds per
step. Prints:
  one job   `run_job` of the first job in this process (one thread), baseline then new
  preset    the whole preset (`run_study`, `--workers` processes), baseline then new

    python benchmarks/study.py [--preset quick] [--workers 2] [--skip-preset] [--config overrides.json]
"""

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the baseline step lives beside this file

import train_throughput  # noqa: E402

from tinydot import study as study_module, training  # noqa: E402
from tinydot.data.strokes import load_strokes, locate_data_dir  # noqa: E402
from tinydot.model import TinyDOT  # noqa: E402
from tinydot.study import Study, job_specs, run_study  # noqa: E402

NEW = (training.training_step, training.make_optimizer, TinyDOT.nll)
RUN_JOB = study_module.run_job


def use_baseline(on: bool) -> None:
    """Patch the pre-issue-15 step into tinydot (on) or restore tinydot's own (off)."""
    if on:
        training.training_step = train_throughput.baseline_step
        training.make_optimizer = train_throughput.baseline_optimizer
        TinyDOT.nll = train_throughput.baseline_nll
    else:
        training.training_step, training.make_optimizer, TinyDOT.nll = NEW


def baseline_run_job(spec: dict) -> dict:
    """`run_job` with the baseline step; a module-level function so that spawned workers can run it."""
    use_baseline(True)
    return RUN_JOB(spec)


def steps_trained(run_dir: Path) -> int:
    """Training steps taken by every lottery run under `run_dir`: its dense level from step 0, each
    ticket from the rewind step (the last row of a level's metrics.csv is its last step)."""
    total = 0
    for lottery in {p.parent for p in run_dir.rglob("level_0")}:
        rewind = json.loads((lottery / "config.json").read_text())["prune"]["rewind_step"]
        for metrics in lottery.glob("level_*/metrics.csv"):
            last = int(pd.read_csv(metrics)["step"].iloc[-1])
            total += last if metrics.parent.name == "level_0" else last - rewind
    return total


def one_job(study: Study, out: Path, data_dir: str) -> None:
    run_dir = out / "job"
    spec = job_specs(study, run_dir, data_dir)[0]
    strokes = load_strokes("train", data_dir)
    assignments = study_module.assign(strokes, study)  # what run_study writes first
    # warm-up, untimed: the first training in a process pays for lazy initialisation (kernels, allocator)
    training.train(strokes.subset(range(200)), out / "warm-up", study.model,
                   dataclasses.replace(study.train, steps=5, warmup_steps=1, checkpoint_every=0), progress=False)
    times = {}
    for label, baseline in (("baseline", True), ("new", False)):
        folder = run_dir / label
        folder.mkdir(parents=True)
        assignments.to_csv(folder / "assignments.csv", index=False)
        use_baseline(baseline)
        started = time.perf_counter()
        row = RUN_JOB({**spec, "run_dir": str(folder)})
        times[label] = (time.perf_counter() - started, steps_trained(folder), row["needed_fraction"])
        use_baseline(False)
    print(f"one job ({study_module.job_name(spec['measure'], spec['bin'], spec['seed'])}, 1 thread):")
    for label, (seconds, steps, needed) in times.items():
        print(f"  {label:9s} {seconds:7.1f} s  {steps:6d} training steps  {seconds / steps * 1e3:6.1f} ms/step"
              f"  needed fraction {needed:.4f}")
    (b_s, b_n, _), (n_s, n_n, _) = times["baseline"], times["new"]
    print(f"  ratio baseline / new: {b_s / n_s:.2f}x wall, {(b_s / b_n) / (n_s / n_n):.2f}x per step")


def preset(study: Study, out: Path, data_dir: str, workers: int) -> None:
    times = {}
    for label, job in (("baseline", baseline_run_job), ("new", RUN_JOB)):
        study_module.run_job = job  # run_study hands this function to its workers
        started = time.perf_counter()
        try:
            result = run_study(study, out / label, data_dir=data_dir, workers=workers, progress=False)
        finally:  # one worker runs the jobs in this process: the baseline's patch must not outlive its run
            study_module.run_job = RUN_JOB
            use_baseline(False)
        times[label] = (time.perf_counter() - started, steps_trained(result.run_dir))
    print(f"preset ({len(job_specs(study, out, data_dir))} jobs, {workers} workers):")
    for label, (seconds, steps) in times.items():
        print(f"  {label:9s} {seconds / 60:6.2f} min  {steps:7d} training steps")
    (b_s, b_n), (n_s, n_n) = times["baseline"], times["new"]
    print(f"  ratio baseline / new: {b_s / n_s:.2f}x wall, {(b_s / b_n) / (n_s / n_n):.2f}x per step")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-preset", action="store_true", help="time one job only")
    parser.add_argument("--config", help="JSON of overrides applied over the preset (e.g. a smoke test)")
    args = parser.parse_args()
    study = Study.preset(args.preset, json.loads(Path(args.config).read_text()) if args.config else None)
    data_dir = str(locate_data_dir(None))
    out = Path(tempfile.mkdtemp(prefix="tinydot-bench-study-"))
    try:
        one_job(study, out, data_dir)
        if not args.skip_preset:
            preset(study, out, data_dir, args.workers)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
