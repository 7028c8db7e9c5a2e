"""Running independent jobs: in this process, a local process pool, or Ray. One interface.

A job is a picklable top-level function applied to a picklable spec. Every job pins its own
torch thread count (`threads`), so a result does not depend on where it ran: the same config gives
identical numbers under every executor.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tinydot.errors import ConfigError

EXECUTORS = ("local", "ray")


def progress_bar(total: int | None, enabled: bool, description: str):
    """A rich progress bar and its task (total None: a count without an end); its `status` field
    shows a running summary (e.g. CPU time and energy so far)."""
    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}"), disable=not enabled)
    return bar, bar.add_task(description, total=total, status="")


def check_executor(executor: str, workers: int) -> None:
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")


def run_jobs(fn: Callable[[Any], Any], specs: Sequence[Any], *, executor: str = "local", workers: int = 1,
             ray_address: str | None = None, progress: bool = True, description: str = "jobs",
             status: Callable[[list[Any]], str] | None = None) -> list[Any]:
    """Apply `fn` to every spec and return the results in the order of `specs`. `status`, given the
    results finished so far, returns a short text for the progress bar."""
    check_executor(executor, workers)
    results: list[Any] = [None] * len(specs)
    bar, task = progress_bar(len(specs), progress, description)

    def advance():
        done = [r for r in results if r is not None]
        bar.update(task, advance=1, status=status(done) if status else "")

    with bar:
        if executor == "ray":
            _run_ray(fn, specs, results, workers, ray_address, advance)
        elif workers == 1 or len(specs) <= 1:
            for i, spec in enumerate(specs):
                results[i] = fn(spec)
                advance()
        else:
            context = multiprocessing.get_context("spawn")  # no forked torch state in the workers
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(fn, spec): i for i, spec in enumerate(specs)}
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]] = future.result()
                    advance()
    return results


def _run_ray(fn, specs, results, workers, ray_address, advance) -> None:
    try:
        import ray  # optional and heavy: imported only when the ray executor is chosen
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'tinydot[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        options = {"address": ray_address} if ray_address else {"num_cpus": workers}
        try:
            ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as err:
            raise ConfigError(f"cannot reach the Ray cluster at {ray_address}: {err}") from None
    try:
        remote = ray.remote(num_cpus=1)(fn)
        pending = {remote.remote(spec): i for i, spec in enumerate(specs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                advance()
    finally:
        if started_here:
            ray.shutdown()
