"""Running independent jobs: in this process, a local process pool, or Ray. One interface.

A job is a picklable top-level function applied to a picklable spec. A job that must give the same
numbers under every executor pins its own torch thread count (the study's jobs do: `study.run_job`),
so its result does not depend on where it ran.

Workers die with the process that started them: an exception, Ctrl-C (SIGINT) or SIGTERM in that
process cancels the queued jobs and kills the running ones, and every local worker watches its
parent, so that even after kill -9 of the parent no worker keeps running jobs (or idles) alone.
A killed job loses only the work since its last checkpoint: jobs are expected to resume.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from tinydot.errors import ConfigError

EXECUTORS = ("local", "ray")


def progress_bar(total: int | None, enabled: bool, description: str):
    """A rich progress bar and its task (total None: a count without an end); its `status` field
    shows a running summary (e.g. CPU time and energy so far)."""
    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}"), disable=not enabled)
    return bar, bar.add_task(description, total=total, status="")


def passing_bar(description: str, enabled: bool, status: bool = False) -> Progress:
    """A progress bar that leaves nothing behind: drawn on a terminal or in Jupyter only, so that
    piped or logged output gets no blank lines where it was (`status`: a column for the task's `status` field)."""
    columns = [TextColumn(description), BarColumn(), MofNCompleteColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    console = Console()
    return Progress(*columns, TimeRemainingColumn(), console=console, transient=True,
                    disable=not (enabled and (console.is_terminal or console.is_jupyter)))


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_executor(executor: str, workers: int, ray_address: str | None = None) -> None:
    """Refuse an unknown executor, a worker count below one, and a Ray address ("HOST:PORT" or
    "ray://HOST:PORT") that nothing answers at: ray.init would retry it for minutes."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if ray_address and ray_address not in ("auto", "local"):
        parts = urllib.parse.urlsplit(ray_address if "://" in ray_address else "//" + ray_address)
        try:
            host, port = parts.hostname, parts.port  # IPv6 in brackets: [::1]:6379
        except ValueError:  # a port that is no number
            host = port = None
        if parts.scheme not in ("", "ray") or not host or port is None:
            raise ConfigError(f"Ray address {ray_address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as err:
            raise ConfigError(f"cannot reach the Ray cluster at {ray_address} ({err.strerror or err}); start one "
                              "with `ray start --head` there, or check the address") from None


def run_jobs(fn: Callable[[Any], Any], specs: Sequence[Any], *, executor: str = "local", workers: int = 1,
             ray_address: str | None = None, progress: bool = True, description: str = "jobs",
             status: Callable[[list[Any]], str] | None = None) -> list[Any]:
    """Apply `fn` to every spec and return the results in the order of `specs`. `status`, given the
    results finished so far, returns a short text for the progress bar."""
    check_executor(executor, workers, ray_address)
    pool = min(workers, len(specs))  # local worker processes
    if executor == "local" and pool > (cores := usable_cores()):  # a note, not an error: it runs, only slower
        Console(stderr=True).print(f"note: {pool} worker processes on {cores} usable CPU core{'s' * (cores > 1)} slow "
                                   f"each other down; --workers {cores} is usually the fastest", highlight=False,
                                   soft_wrap=True)
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
            with _sigterm_raises():
                _run_pool(fn, specs, results, pool, advance)
    return results


PARENT_POLL_SECONDS = 0.2  # how soon a worker notices that its parent is gone


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: a daemon thread ends this worker as soon as its parent has died.

    A process whose parent dies is re-parented (to init or a subreaper), so os.getppid() changes;
    polling it also covers kill -9 of the parent, which no handler in the parent can catch.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # at once, from this thread, whatever job the main thread is running

    threading.Thread(target=watch, name="tinydot-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _sigterm_raises():
    """Within the block, SIGTERM raises SystemExit(143) in the main thread (its default would end
    the process without any cleanup), so that the pool below is stopped like on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run_pool(fn, specs, results, workers, advance) -> None:
    context = multiprocessing.get_context("spawn")  # no forked torch state in the workers
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                  initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(fn, spec): i for i, spec in enumerate(specs)}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            advance()
    except BaseException:  # a failed job, Ctrl-C, SIGTERM: no queued job starts, no worker survives
        _kill_workers(pool)
        raise
    pool.shutdown()


def _kill_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    # the pool's processes are private (Python 3.14 adds pool.kill_workers()); shutdown forgets them
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=5)


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
