"""Job runners: pool workers die with the process that started them (kill -9, SIGTERM, Ctrl-C, a failed job)."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tinydot.executors import passing_bar, run_jobs

# Two workers, four jobs of a minute each: every job writes "<job>-<pid>.started" and sleeps.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    from tinydot.executors import run_jobs


    def slow_job(spec):
        folder, job = spec
        Path(folder, f"{job}-{os.getpid()}.started").write_text("")
        if job == int(sys.argv[2]):
            time.sleep(1)
            raise ValueError("this job fails")
        time.sleep(60)
        return job


    if __name__ == "__main__":
        # as in a terminal: a job started in the background (CI, nohup) inherits SIGINT ignored
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        run_jobs(slow_job, [(sys.argv[1], job) for job in range(4)], workers=2, progress=False)
""")


def wait_for(condition, seconds: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def gone(pid: int) -> bool:
    """No such process any more (a zombie waiting for a reaper counts as gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def survivors():
    """Processes a test started; whatever still runs at its end is killed (a failing test leaves none)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


def start_pool(tmp_path: Path, survivors: list[int], failing_job: int = -1):
    """The script in a subprocess; returns it and its two workers' pids once both run a job."""
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(failing_job)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    survivors.append(parent.pid)
    running = lambda: {int(p.stem.split("-")[1]) for p in tmp_path.glob("*.started")}  # noqa: E731
    assert wait_for(lambda: len(running()) == 2, 60), parent.communicate(timeout=5)
    pids = running()
    survivors.extend(pids)
    assert all(psutil.Process(pid).ppid() == parent.pid for pid in pids)
    return parent, pids


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_workers_die_with_their_parent(how, tmp_path, survivors):
    parent, workers = start_pool(tmp_path, survivors)
    parent.send_signal(how)
    assert wait_for(lambda: all(gone(pid) for pid in workers), 5), [psutil.Process(p).status() for p in workers]
    parent.wait(timeout=10)
    if how == signal.SIGTERM:
        assert parent.returncode == 128 + signal.SIGTERM  # SystemExit(143), after the pool was stopped
    time.sleep(1)
    assert len(list(tmp_path.glob("*.started"))) == 2  # no queued job started after the kill


def test_a_failed_job_stops_the_other_workers(tmp_path, survivors):
    parent, _ = start_pool(tmp_path, survivors, failing_job=1)
    assert parent.wait(timeout=20) == 1  # at once, not after the other jobs' minute
    assert "ValueError: this job fails" in parent.stderr.read().decode()
    every_worker = {int(p.stem.split("-")[1]) for p in tmp_path.glob("*.started")}
    assert all(gone(pid) for pid in every_worker)
    assert len(every_worker) == 2 and len(list(tmp_path.glob("*.started"))) <= 3  # job 3 never started


def square(x: int) -> int:
    return x * x


def test_results_come_back_in_order_under_every_local_runner():
    assert run_jobs(square, list(range(6)), workers=1, progress=False) == [x * x for x in range(6)]
    assert run_jobs(square, list(range(6)), workers=2, progress=False) == [x * x for x in range(6)]


def test_a_passing_bar_leaves_nothing_in_piped_output(capsys):
    # rich's transient bar printed an empty line where it had been, even when it drew nothing
    with passing_bar("steps", enabled=True, status=True) as bar:
        task = bar.add_task("steps", total=3, status="")
        for _ in range(3):
            bar.advance(task)
    assert capsys.readouterr().out == ""


def test_an_unreachable_ray_address_is_refused_before_any_work(tmp_path):
    # ray.init retries an address nothing answers at for minutes; the check connects once
    from tinydot.errors import ConfigError
    from tinydot.study import Study, run_study

    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at 127.0.0.1:1 \(.*\); start one with"):
        run_study(Study.preset("quick"), tmp_path / "out", executor="ray", ray_address="127.0.0.1:1")
    assert not (tmp_path / "out").exists()
    for address in ("nohost", "host:port", "http://127.0.0.1:1"):
        with pytest.raises(ConfigError, match=rf"Ray address '{address}' is not HOST:PORT"):
            run_jobs(abs, [1], executor="ray", ray_address=address)


def test_a_ray_address_that_answers_passes_the_check():
    import socket

    from tinydot.executors import check_executor

    listening = []
    for family, host, forms in ((socket.AF_INET, "127.0.0.1", ("{h}:{p}", "ray://{h}:{p}")),
                                (socket.AF_INET6, "::1", ("[{h}]:{p}", "ray://[{h}]:{p}"))):
        server = socket.socket(family)
        try:
            server.bind((host, 0))
        except OSError:  # no IPv6 on this machine
            server.close()
            continue
        server.listen()
        listening.append(host)
        for form in forms:
            check_executor("ray", 1, form.format(h=host, p=server.getsockname()[1]))  # raises if refused
        server.close()
    assert "127.0.0.1" in listening


def test_more_local_workers_than_cores_run_with_a_note(capsys, monkeypatch):
    import tinydot.executors as executors

    monkeypatch.setattr(executors, "usable_cores", lambda: 1)
    assert run_jobs(square, [1, 2, 3], workers=5, progress=False) == [1, 4, 9]
    assert capsys.readouterr().err == ("note: 3 worker processes on 1 usable CPU core slow each other down; "
                                       "--workers 1 is usually the fastest\n")  # 3 jobs: 3 processes, not 5
    assert run_jobs(square, [1, 2, 3], workers=1, progress=False) == [1, 4, 9]
    assert capsys.readouterr().err == ""
