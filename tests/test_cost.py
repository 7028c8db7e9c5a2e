"""CostMeter: time and energy of a run segment, offline and file-quiet codecarbon, resumed totals."""

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_flops import synthetic_strokes

from tinydot.config import ModelConfig, TrainConfig
from tinydot.cost import COST_FILE, CostMeter, read_cost, resolve_country
from tinydot.data.batching import Encoded
from tinydot.errors import ConfigError
from tinydot.flops import train_step_flops
from tinydot.training import BatchStream, train

NO_POWER_COUNTERS = not Path("/sys/class/powercap/intel-rapl").exists()


def busy(cpu_seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < cpu_seconds:
        pass


def test_a_meter_records_time_and_energy(tmp_path):
    before = time.process_time()
    with CostMeter(tmp_path, counters=lambda: {"train_flops_dense": 12}) as meter:
        busy(0.3)
    spent = time.process_time() - before
    total = meter.total
    assert 0.3 <= total["cpu_seconds"] <= spent
    assert total["wall_seconds"] > 0
    assert total["train_flops_dense"] == 12
    assert read_cost(tmp_path) == json.loads(json.dumps(total)) == total  # the file is the record
    assert total["energy_kwh"] > 0 and total["co2_kg"] > 0
    assert total["energy_kwh"] == pytest.approx(total["cpu_energy_kwh"] + total["ram_energy_kwh"])
    assert total["country"] == resolve_country()[0]
    assert total["codecarbon_version"]
    assert len(total["segments"]) == 1
    if NO_POWER_COUNTERS:  # this machine: codecarbon can only estimate, and the record says so
        assert total["energy_mode"].startswith("estimated:") and "no power counter read" in total["energy_mode"]
        assert total["energy_measured"] is False


def test_nothing_is_written_outside_the_run_folder(tmp_path, monkeypatch):
    cwd, home, run = tmp_path / "cwd", tmp_path / "home", tmp_path / "run"
    cwd.mkdir(), home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))  # ~/.codecarbon.config would land here
    from codecarbon.lock import LOCKFILE

    temp = Path(tempfile.gettempdir())

    def codecarbon_files():
        return {p.name for p in temp.iterdir() if "codecarbon" in p.name or "emissions" in p.name}

    shared_before = codecarbon_files()
    with CostMeter(run) as meter:
        busy(0.05)
        meter.flush()
        assert not Path(LOCKFILE).exists() or ".codecarbon.lock" in shared_before
    assert meter.total["energy_kwh"] is not None
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []
    assert [p.name for p in run.iterdir()] == [COST_FILE]
    assert codecarbon_files() == shared_before


def test_no_network_request(tmp_path, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with CostMeter(tmp_path) as meter:
        busy(0.05)
    assert attempts == []
    assert meter.total["energy_kwh"] is not None


def test_concurrent_meters_in_two_processes(tmp_path, monkeypatch):
    """codecarbon's single-instance lock (a file in the temp folder) must not stop a second meter."""
    import codecarbon.lock

    held = tmp_path / "held.lock"  # another codecarbon instance holds the lock
    held.touch()
    monkeypatch.setattr(codecarbon.lock, "LOCKFILE", str(held))
    ready, release = tmp_path / "ready", tmp_path / "release"
    script = (f"import time, pathlib\nfrom tinydot.cost import CostMeter\n"
              f"with CostMeter({str(tmp_path / 'other')!r}):\n"
              f"    pathlib.Path({str(ready)!r}).touch()\n"
              f"    deadline = time.time() + 60\n"
              f"    while not pathlib.Path({str(release)!r}).exists() and time.time() < deadline:\n"
              f"        time.sleep(0.05)\n")
    other = subprocess.Popen([sys.executable, "-c", script],
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline and other.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), "the other process's meter did not start"
        with CostMeter(tmp_path / "this") as meter:
            busy(0.05)
    finally:
        release.touch()
        assert other.wait(timeout=60) == 0
    assert meter.total["energy_kwh"] is not None
    assert read_cost(tmp_path / "other")["energy_kwh"] is not None


class _NoMeasurement:
    """A tracker that starts but measures nothing (codecarbon swallows its own errors this way)."""

    def __init__(self, **kwargs):
        pass

    def start(self):
        return None

    def flush(self):
        return None

    def stop(self):
        return None


class _Exploding:
    def __init__(self, **kwargs):
        raise RuntimeError("no hardware")


@pytest.mark.parametrize("breakage", ["missing", "constructor", "no-measurement"])
def test_a_broken_tracker_is_one_warning_not_a_failure(tmp_path, monkeypatch, caplog, breakage):
    import codecarbon

    if breakage == "missing":
        monkeypatch.setitem(sys.modules, "codecarbon", None)
    else:
        monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker",
                            _Exploding if breakage == "constructor" else _NoMeasurement)
    with caplog.at_level(logging.WARNING, logger="tinydot.cost"), \
            CostMeter(tmp_path, counters=lambda: {"train_flops_dense": 3}) as meter:
        busy(0.05)
        meter.flush()
    warnings = [r for r in caplog.records if r.name == "tinydot.cost"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "energy not recorded" in warnings[0].getMessage()
    total = read_cost(tmp_path)
    assert total["energy_kwh"] is None and total["co2_kg"] is None
    assert total["energy_mode"] == "not recorded" and total["energy_measured"] is False
    assert total["cpu_seconds"] >= 0.05 and total["train_flops_dense"] == 3


def test_codecarbon_is_silent_unless_verbose(tmp_path, capfd):
    with CostMeter(tmp_path / "quiet"):
        busy(0.05)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    with CostMeter(tmp_path / "loud", verbose=True):
        busy(0.05)
    assert "codecarbon" in capfd.readouterr().err
    logging.getLogger("codecarbon").setLevel(logging.CRITICAL)


def test_segments_add_up_across_a_resume(tmp_path):
    first = CostMeter(tmp_path, counters=lambda: {"train_flops_dense": 10, "train_flops_sparse": 4})
    first.__enter__()
    busy(0.05)
    recorded = first.flush()  # then the process dies: no __exit__
    first._energy.read(stop=True)  # (only to end its tracker's threads in this test process)
    with pytest.raises(KeyboardInterrupt), \
            CostMeter(tmp_path, counters=lambda: {"train_flops_dense": 7, "train_flops_sparse": 7}):
        busy(0.05)
        raise KeyboardInterrupt  # an interrupted segment still records what it cost
    with CostMeter(tmp_path, counters=lambda: {"train_flops_dense": 1, "train_flops_sparse": 1}) as last:
        pass
    total = read_cost(tmp_path)
    segments = total["segments"]
    assert len(segments) == 3 and segments[0] == recorded["segments"][0]
    assert total["train_flops_dense"] == 18 and total["train_flops_sparse"] == 12
    for key in ("wall_seconds", "cpu_seconds", "energy_kwh", "co2_kg"):
        assert total[key] == pytest.approx(sum(s[key] for s in segments))
    assert total == last.total
    # a segment without energy makes the run's energy unknown, not smaller
    with CostMeter(tmp_path, energy=False):
        pass
    total = read_cost(tmp_path)
    assert total["energy_kwh"] is None and total["cpu_seconds"] > 0
    assert "off" in total["energy_mode"].split(" | ")
    # an analysis run again recomputes everything: its cost.json is that run's alone
    with CostMeter(tmp_path, counters=lambda: {"train_flops_dense": 5}, energy=False, resumes=False) as again:
        pass
    total = read_cost(tmp_path)
    assert len(total["segments"]) == 1 and total["train_flops_dense"] == 5 and total == again.total


def test_country_resolution():
    assert resolve_country("fra", environ={}) == ("FRA", "argument")
    assert resolve_country("DE", environ={}) == ("DEU", "argument")
    assert resolve_country(None, environ={"TINYDOT_COUNTRY": "CAN"}) == ("CAN", "TINYDOT_COUNTRY")
    cli = {"TINYDOT_COUNTRY": "DEU", "TINYDOT_COUNTRY_SOURCE": "--country"}  # as `tinydot --country DEU` hands it on
    assert resolve_country(None, environ=cli) == ("DEU", "--country")
    assert resolve_country(None, environ={"LANG": "de_DE.UTF-8"}) == ("DEU", "locale (DE)")
    assert resolve_country(None, environ={"LANG": "C.UTF-8"}) == ("USA", "default")
    assert resolve_country(None, environ={}) == ("USA", "default")
    for bad in ("XX", "U.S.", "Narnia"):
        with pytest.raises(ConfigError, match="ISO 3166"):
            resolve_country(bad, environ={})
    # as in POSIX, a set LC_ALL overrides LANG: C names no territory
    assert resolve_country(None, environ={"LC_ALL": "C", "LANG": "sv_SE.UTF-8"}) == ("USA", "default")
    assert resolve_country(None, environ={"LC_ALL": "sv_SE.UTF-8", "LANG": "de_DE.UTF-8"}) == ("SWE", "locale (SE)")


def test_a_country_codecarbon_has_no_grid_mix_for_is_not_silently_the_world_average():
    from tinydot.cost import grid_mix_countries

    known = grid_mix_countries()  # codecarbon's bundled table, read as a file
    assert {"USA", "FRA", "DEU", "SWE"} <= known and "LIE" not in known and "MCO" not in known
    with pytest.raises(ConfigError, match=r"^codecarbon has no grid carbon intensity for LIE \(argument\) and would "
                                          "use its world average; give the code of the country whose grid"):
        resolve_country("LI", environ={})
    with pytest.raises(ConfigError, match=r"for MCO \(TINYDOT_COUNTRY\)"):
        resolve_country(None, environ={"TINYDOT_COUNTRY": "MCO"})
    assert resolve_country(None, environ={"LANG": "de_LI.UTF-8"}) == (
        "USA", "default (locale LI: no grid mix in codecarbon)")


def test_training_writes_its_cost_and_a_resume_adds_to_it(tmp_path, monkeypatch):
    """A run killed in its third step (after the step-2 checkpoint and the third batch's forward
    and backward) and resumed from that checkpoint: cost.json holds both segments and the FLOPs of
    every batch processed, the one done twice included."""
    from tinydot import training

    cfg_model = ModelConfig(n_layers=1, d_model=16, d_mlp=32)
    cfg = TrainConfig(steps=5, tokens_per_batch=600, warmup_steps=1, eval_every=0, checkpoint_every=2)
    data = synthetic_strokes(n=30, seed=4)
    real_step, calls = training.training_step, []

    def die_in_step_3(model, optimizer, batch, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third batch's forward and backward are done: its work is spent
            model.nll(*batch).sum().backward()
            raise KeyboardInterrupt
        return real_step(model, optimizer, batch, *args, **kwargs)

    monkeypatch.setattr(training, "training_step", die_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path, cfg_model, cfg, progress=False)
    monkeypatch.setattr(training, "training_step", real_step)
    train(data, tmp_path, cfg_model, cfg, progress=False)
    train(data, tmp_path, cfg_model, cfg, progress=False)  # finished: nothing more is spent

    encoded = Encoded(data)
    stream = BatchStream(encoded, cfg)
    batches = [stream.next() for _ in range(cfg.steps)]
    processed = batches[:3] + batches[2:]  # batch 2 twice: the resume starts from the step-2 checkpoint
    expected = sum(train_step_flops(cfg_model, len(i), int(encoded.lengths[i].max())) for i in processed)
    cost = read_cost(tmp_path)
    assert len(cost["segments"]) == 2
    assert cost["train_flops_dense"] == cost["train_flops_sparse"] == expected
    assert cost["eval_flops_dense"] == 0
    assert cost["cpu_seconds"] == pytest.approx(sum(s["cpu_seconds"] for s in cost["segments"]))
    assert np.all([s["cpu_seconds"] > 0 for s in cost["segments"]])


def test_a_run_killed_while_writing_its_checkpoint_has_counted_the_steps_it_keeps(tmp_path):
    """kill -9 (os._exit: no handler, no flush) as the step-2 checkpoint is written: cost.json already
    holds the FLOPs of steps 1 and 2, which that checkpoint keeps."""
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_flops import synthetic_strokes
from tinydot import training
from tinydot.config import ModelConfig, TrainConfig

def die(path, *args, **kwargs):
    if str(path).endswith("checkpoint.safetensors"):
        os._exit(9)  # as kill -9: nothing after this runs
    return real(path, *args, **kwargs)

real, training.save_tensors = training.save_tensors, die
cfg = TrainConfig(steps=5, tokens_per_batch=600, warmup_steps=1, eval_every=0, checkpoint_every=2)
training.train(synthetic_strokes(n=30, seed=4), {str(tmp_path)!r}, ModelConfig(n_layers=1, d_model=16, d_mlp=32),
               cfg, progress=False)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr
    assert not (tmp_path / "checkpoint.safetensors").exists()
    cfg = TrainConfig(steps=5, tokens_per_batch=600, warmup_steps=1, eval_every=0, checkpoint_every=2)
    encoded = Encoded(synthetic_strokes(n=30, seed=4))
    stream = BatchStream(encoded, cfg)
    kept = [stream.next() for _ in range(2)]  # steps 1 and 2
    model = ModelConfig(n_layers=1, d_model=16, d_mlp=32)
    expected = sum(train_step_flops(model, len(i), int(encoded.lengths[i].max())) for i in kept)
    assert read_cost(tmp_path)["train_flops_dense"] == expected


def test_a_run_folder_is_written_by_one_process_at_a_time(tmp_path, monkeypatch):
    """A second process metering a run folder another one holds is refused in one line, before it
    writes anything; the hold ends with the holder (kill -9 included) and with this process's meter
    (an interrupted start included); one process may nest holds of one folder."""
    import re

    import tinydot.cost as cost
    import tinydot.io as tio

    run_dir = tmp_path / "run"
    take = f"""
import sys, time
from tinydot.cost import CostMeter
with CostMeter({str(run_dir)!r}, energy=False):
    print("holding", flush=True)
    time.sleep(float(sys.argv[1]))
"""
    holder = subprocess.Popen([sys.executable, "-c", take, "120"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(ConfigError, match=f"^another process is writing {re.escape(str(run_dir))}; wait for it "
                                              "to finish, or choose another output folder$"):
            train(synthetic_strokes(n=30, seed=4), run_dir, ModelConfig(n_layers=1, d_model=16, d_mlp=32),
                  TrainConfig(steps=2, tokens_per_batch=600, warmup_steps=1, eval_every=0), progress=False)
        assert list(run_dir.iterdir()) == []  # the refused run wrote nothing (no config.json) into the folder
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    with tio.hold_folder(run_dir), tio.hold_folder(run_dir / ".." / "run"):  # nested, spelt otherwise
        with CostMeter(run_dir, energy=False):
            pass
    assert read_cost(run_dir)["segments"] and tio._HELD == {}

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cost, "_Energy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with CostMeter(run_dir):
            pass
    assert tio._HELD == {}
    again = subprocess.run([sys.executable, "-c", take, "0"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == "holding\n", again.stderr  # free for another process
