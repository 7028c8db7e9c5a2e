"""The CLI as a user runs it: real subprocesses, exit codes and one-line errors (refusals that need no
fresh interpreter run main() in this process: `helpers.user_error`)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import user_error


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tinydot.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def assert_user_error(result, message):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_data_info(data_dir):
    result = run("data", "info", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "60,000" in result.stdout and "10,000" in result.stdout


def test_data_show_writes_a_png(data_dir, tmp_path):
    out = tmp_path / ("a-folder-with-a-rather-long-name-" * 3) / "grid.png"  # longer than a terminal line
    out.parent.mkdir()
    result = run("data", "show", "--split", "test", "--n", "16", "--digit", "7", "--out", str(out),
                 env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {out}" in result.stdout.splitlines()  # on one line, though piped (80 columns)


@pytest.mark.parametrize("args,message", [
    (["data", "show", "--split", "valid", "--out", "x.png"], "unknown split 'valid'"),
    (["data", "show", "--digit", "12", "--out", "x.png"], "--digit must be between 0 and 9"),
    (["data", "show", "--n", "0", "--out", "x.png"], "--n must be between 1 and 400"),
    (["data", "show", "--out", "x.jpg"], "must end in .png"),
])
def test_bad_arguments_give_one_line_errors(args, message, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert message in user_error(monkeypatch, capsys, *args)  # in this process: exit 2, one line, no traceback
    assert not list(tmp_path.iterdir())


def test_missing_data_dir(tmp_path):
    result = run("data", "info", "--data-dir", str(tmp_path / "nowhere"))
    assert_user_error(result, f"--data-dir {tmp_path / 'nowhere'} does not exist")
    result = run("data", "info", "--data-dir", str(tmp_path))
    assert_user_error(result, "lacks train-padded-trailing.tar.gz")


def test_complexity_writes_tables_and_plots(data_dir, tmp_path):
    import pandas as pd

    result = run("complexity", "--split", "test", "--measure", "L", "--bins", "4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"measures.csv", "bins.csv", "summary.csv", "correlations.csv",
                                                    "histograms.png"}
    assert "Pearson r(L, S)" in result.stdout
    bins = pd.read_csv(tmp_path / "bins.csv")
    assert bins["count"].tolist() == [2500] * 4
    measures = pd.read_csv(tmp_path / "measures.csv")
    assert len(measures) == 10_000 and measures.groupby("bin").L.max().is_monotonic_increasing


def test_complexity_of_one_digit_keeps_split_indices(data_dir, tmp_path):
    import pandas as pd

    from tinydot.complexity import measure_all
    from tinydot.data.strokes import load_strokes

    result = run("complexity", "--split", "test", "--digit", "1", "--measure", "L", "--bins", "3",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    measures, test = pd.read_csv(tmp_path / "measures.csv"), load_strokes("test")
    assert len(measures) == 1135 and (test.labels[measures["index"]] == 1).all()  # rows name the split's sequences
    assert (measures["L"].to_numpy() == test.lengths[measures["index"]]).all()
    assert measures.loc[:2, "S"].tolist() == measure_all(test.subset(measures["index"][:3].to_numpy()))["S"].tolist()


@pytest.mark.parametrize("args,message", [
    (["--measure", "Q"], "unknown measure 'Q'"),
    (["--bins", "1"], "--bins must be an integer >= 2"),
    (["--digit", "1", "--bins", "5000"], "5000 bins are more than the 1135 samples"),
])
def test_complexity_bad_arguments(args, message, data_dir, tmp_path, monkeypatch, capsys):
    assert message in user_error(monkeypatch, capsys, "complexity", "--split", "test", "--out", tmp_path / "out", *args)
    assert not (tmp_path / "out").exists()


def test_train_then_sample(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run("train", "--out", str(run_dir), "--steps", "3", "--d-model", "16", "--n-layers", "1")
    assert result.returncode == 0, result.stderr
    assert "test NLL" in result.stdout
    # the final line's NLL covers the whole split, metrics.csv's the first eval_sequences: both said
    assert "on all 10,000 test sequences (metrics.csv: the first 2,000 test sequences)" in result.stdout
    import json

    model = json.loads((run_dir / "config.json").read_text())["model"]
    assert (model["d_model"], model["d_mlp"], model["n_layers"]) == (16, 64, 1)  # the MLP follows --d-model
    assert result.stderr.startswith("note: warmup_steps (200) >= steps (3): the learning rate never reached its peak")
    assert {"model.safetensors", "checkpoint.safetensors", "config.json", "metrics.csv"} <= {
        p.name for p in run_dir.iterdir()}
    out = tmp_path / "sevens.png"
    result = run("sample", "--checkpoint", str(run_dir), "--digit", "7", "--n", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_errors_name_the_options_the_user_typed():
    import typer

    from tinydot.cli import app, option_words

    commands = typer.main.get_command(app).commands
    hessian, compress, redundancy = (commands[name].params for name in ("hessian", "compress", "redundancy"))
    assert option_words("lanczos_steps (3) must be >= top_k (5)", hessian) == \
        "--lanczos-steps (3) must be >= --top-k (5)"
    assert option_words("sequences must be between 1 and 60000, got 0", hessian) == \
        "--sequences must be between 1 and 60000, got 0"
    assert option_words("eval_sequences + score_sequences (1 + 2) exceed the 3 test sequences", compress) == \
        "--eval-sequences + --score-sequences (1 + 2) exceed the 3 test sequences"
    for unchanged in ("the top_k largest eigenvalues must be positive",  # a name inside prose
                      "sequences of 12 positions exceed max_len"):  # a word that is not the field
        assert option_words(unchanged, hessian) == unchanged
    assert option_words("model n_heads must be a positive integer", redundancy) == \
        "model n_heads must be a positive integer"  # a config-file field, though --model is an option
    assert option_words("density_runs must be >= 1, got 0", hessian) == "--density-runs must be >= 1, got 0"
    assert option_words("density_steps must be >= 2, got 1", hessian) == \
        "density_steps must be >= 2, got 1"  # no such option
    for listed in ("unknown ModelConfig field(s) foo; known: activation, d_mlp, d_model, n_layers",  # JSON keys
                   "out holds a compress run with other settings (eval_sequences 2000 -> 100, "
                   "score_sequences 1000 -> 50); choose another output folder or delete it"):
        assert option_words(listed, commands["train"].params) == listed
        assert option_words(listed, compress) == listed


@pytest.mark.parametrize("args,message", [
    (["train", "--out", "r", "--d-model", "0"], "d_model must be a positive integer"),
    (["sample", "--checkpoint", "nowhere", "--out", "x.png"], "checkpoint nowhere does not exist"),
    (["eval", "--checkpoint", "nowhere.safetensors"], "checkpoint nowhere.safetensors does not exist"),
])
def test_model_commands_bad_arguments(args, message, tmp_path, data_dir):
    result = subprocess.run([sys.executable, "-m", "tinydot.cli", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert_user_error(result, message)


def test_lottery_cli(data_dir, tmp_path, monkeypatch, capsys):
    import json

    import pandas as pd

    (tmp_path / "cfg.json").write_text(json.dumps({
        "model": {"n_layers": 1, "d_model": 16, "d_mlp": 32},
        "train": {"steps": 6, "tokens_per_batch": 2000, "warmup_steps": 1, "eval_every": 0}}))
    result = run("lottery", "--out", str(tmp_path / "run"), "--levels", "1", "--fraction", "0.5",
                 "--rewind", "step:2", "--config", str(tmp_path / "cfg.json"), "--eval-sequences", "50",
                 "--delta", "0.05")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "run" / "results.csv")
    within = table[table["bits_per_step"] <= table["bits_per_step"].iloc[0] * 1.05]  # the summary's tolerance
    assert (f"stays within 5% of dense test NLL up to sparsity {within['sparsity'].iloc[-1]:.3f} "
            f"(level {within['level'].iloc[-1]})") in " ".join(result.stdout.split())
    assert (tmp_path / "run" / "level_1" / "mask.safetensors").exists()
    # --delta only draws the summary line: a finished folder re-summarizes without retraining
    level_file = tmp_path / "run" / "level_1" / "results.json"
    written = level_file.stat().st_mtime_ns
    again = run("lottery", "--out", str(tmp_path / "run"), "--levels", "1", "--fraction", "0.5",
                "--rewind", "step:2", "--config", str(tmp_path / "cfg.json"), "--eval-sequences", "50",
                "--delta", "0.5")
    assert again.returncode == 0, again.stderr
    assert "stays within 50% of dense test NLL up to sparsity 0.500 (level 1)" in " ".join(again.stdout.split())
    assert level_file.stat().st_mtime_ns == written
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prune"]["delta"] == 0.5
    # refusals, in-process (one interpreter start-up for all of them)
    for changed, differ in ((["--fraction", "0.25", "--eval-sequences", "50"], "prune.fraction 0.5 -> 0.25"),
                            (["--fraction", "0.5", "--eval-sequences", "40"], "eval_sequences 50 -> 40")):
        message = user_error(monkeypatch, capsys, "lottery", "--out", tmp_path / "run", "--levels", "1", "--rewind",
                             "step:2", "--config", tmp_path / "cfg.json", *changed)  # would mix two test sets
        assert f"holds a lottery run with a different configuration ({differ}); choose another" in message
    assert "--eval-sequences must be a positive integer, got 0" in user_error(
        monkeypatch, capsys, "lottery", "--out", tmp_path / "none", "--eval-sequences", "0")
    (tmp_path / "text.json").write_text(json.dumps({"model": {"domain": "text", "vocab_size": 10_000}}))
    assert "model domain is 'text', but the command runs --domain strokes; give --domain text" in user_error(
        monkeypatch, capsys, "lottery", "--out", tmp_path / "text", "--config", tmp_path / "text.json")
    assert not (tmp_path / "none").exists() and not (tmp_path / "text").exists()
    # a folder another stage wrote is named as such
    assert "level_0 holds a training run, not a lottery run; choose another output folder" in user_error(
        monkeypatch, capsys, "lottery", "--out", tmp_path / "run" / "level_0", "--config", tmp_path / "cfg.json")
    assert "run holds a lottery run, not a training run; choose another output folder" in user_error(
        monkeypatch, capsys, "train", "--out", tmp_path / "run", "--config", tmp_path / "cfg.json")
    bad = run("lottery", "--out", str(tmp_path / "bad"), "--rewind", "epoch:3")
    assert_user_error(bad, "--rewind must be 'init' or 'step:K'")
    # the lottery folder given where a model goes: its levels are named
    where = f"{tmp_path / 'run'} holds a lottery run: give one of its models, e.g. {tmp_path / 'run' / 'level_0'}"
    assert where in user_error(monkeypatch, capsys, "sample", "--checkpoint", tmp_path / "run",
                               "--out", tmp_path / "x.png")
    assert where in user_error(monkeypatch, capsys, "redundancy", "--model", tmp_path / "run", "--task", "pos",
                               "--out", tmp_path / "red")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "red").exists()


def finished_stroke_study(folder):
    """The files `load_study` reads of a finished stroke study (one job): enough for predict to
    know the study's domain and to reach the checks of its --data."""
    import json

    import pandas as pd

    from tinydot.study import STUDY_EDITION, Study

    (folder / "jobs" / "L-bin0-seed0").mkdir(parents=True)
    row = {"measure": "L", "bin": 0, "seed": 0, "complexity": 20.0, "prunable": 100}
    (folder / "jobs" / "L-bin0-seed0" / "job.json").write_text(json.dumps(row))
    (folder / "config.json").write_text(json.dumps({**Study().to_dict(), "edition": STUDY_EDITION}))
    pd.DataFrame([row]).to_csv(folder / "jobs.csv", index=False)


@pytest.mark.parametrize("args,message", [
    (["study", "--preset", "huge"], "unknown preset 'huge'"),
    (["study", "--config", "missing.json"], "cannot read config file missing.json"),
    (["study", "--workers", "0", "--config", "bins.json"], "study bins must be an integer >= 3"),
    (["study", "--executor", "spark", "--config", "ok.json"], "unknown executor 'spark'"),
    (["predict", "--study", "."], "is not a finished study run"),
    (["predict", "--study", "done", "--data", "valid"], "unknown split 'valid'"),
    (["predict", "--study", "done", "--data", "test:x"], "--data 'test:x': the digit after ':' must be 0..9"),
    (["predict", "--study", "done", "--data", "test:11"], "--data 'test:11': the digit after ':' must be 0..9"),
    (["predict", "--study", "done", "--data", "test:"], "--data 'test:': the digit after ':' must be 0..9"),
    (["rightsize", "--study", "done", "--data", "train:1", "--predictor", "s"],
     "predictor 's' is not one of the study's (did you mean S?); choose one of L, S"),
    (["predict", "--study", "nowhere"], "study run folder nowhere does not exist"),
    (["predict", "--study", "ok.json"], "ok.json is a file, not a study run folder"),
    (["study", "--config", "list.json"], "must be a JSON object whose keys are among"),
    (["study", "--config", "extra.json"], "has a section 'foo' this command does not take; it must be a JSON object "
                                          "whose keys are among model, prune, study, train"),
    (["study", "--config", "flat.json"], "section 'study' must be an object of fields"),
    (["lottery", "--out", "runs/l", "--config", "ok.json"], "has a section 'study' this command does not take"),
    (["study", "--ray-address", "host:1", "--config", "ok.json"], "a Ray address is for the ray executor"),
])
def test_study_and_predict_bad_arguments(args, message, tmp_path, data_dir, monkeypatch, capsys):
    import json

    (tmp_path / "bins.json").write_text(json.dumps({"study": {"bins": 2}}))
    (tmp_path / "ok.json").write_text(json.dumps({"study": {"bins": 3, "max_train_per_bin": 10}}))
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    (tmp_path / "extra.json").write_text(json.dumps({"study": {"bins": 3}, "foo": {}}))
    (tmp_path / "flat.json").write_text(json.dumps({"study": 3}))
    finished_stroke_study(tmp_path / "done")
    monkeypatch.chdir(tmp_path)
    assert message in user_error(monkeypatch, capsys, *args)  # in this process: exit 2, one line, no traceback
    assert not (tmp_path / "runs").exists()  # nothing half-written


@pytest.fixture(scope="module")
def tiny_run(train, tmp_path_factory):
    """A barely trained tiny tinyDOT run folder, made through the Python API (fast)."""
    from tinydot.config import ModelConfig, TrainConfig
    from tinydot.training import train as train_model

    folder = tmp_path_factory.mktemp("tiny-run")
    train_model(train.subset(np.arange(200)), folder, ModelConfig(n_layers=1, d_model=8, d_mlp=16),
                TrainConfig(steps=2, eval_every=0), progress=False)
    return folder


def test_hessian_and_svcca_cli(tiny_run, tmp_path):
    import json

    run_dir = tiny_run
    result = run("--country", "de", "hessian", "--checkpoint", str(run_dir), "--out", str(tmp_path / "h"),
                 "--top-k", "3", "--density", "--sequences", "4", "--lanczos-steps", "8", "--trace-samples", "4",
                 "--density-runs", "2")
    assert result.returncode == 0, result.stderr
    cost = json.loads((tmp_path / "h" / "cost.json").read_text())
    assert (cost["country"], cost["country_source"]) == ("DEU", "--country")
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert len(summary["top_eigenvalues"]) == 3 and summary["density_integral"] == pytest.approx(1.0, abs=0.01)
    assert {"eigenvalues.csv", "spectrum.png", "density.png",
            "density.csv"} <= {p.name for p in (tmp_path / "h").iterdir()}
    result = run("svcca", "--checkpoint", str(run_dir), "--checkpoint", str(run_dir), "--out", str(tmp_path / "s"),
                 "--sequences", "20")
    assert result.returncode == 0, result.stderr
    import pandas as pd

    similarity = pd.read_csv(tmp_path / "s" / "similarity.csv", index_col=0).to_numpy()
    assert np.allclose(np.diag(similarity), 1.0)  # a model against itself, layer by layer
    bad = run("hessian", "--checkpoint", str(run_dir), "--out", str(tmp_path / "bad"), "--top-k", "0")
    assert_user_error(bad, "--top-k must be between 1 and 500, got 0")  # the option's name, not the API's top_k


def test_an_out_folder_holding_another_kind_of_run_is_refused(tiny_run, tmp_path, monkeypatch, capsys, data_dir):
    import json
    import shutil

    from tinydot.cli import main

    def ok(*args):
        monkeypatch.setattr(sys, "argv", ["tinydot", *map(str, args)])
        main()  # returns (exit status 0) unless it fails

    training = tmp_path / "training"
    shutil.copytree(tiny_run, training)
    before = (training / "cost.json").read_bytes()
    for command in (["svcca", "--checkpoint", tiny_run], ["hessian", "--checkpoint", tiny_run]):
        message = user_error(monkeypatch, capsys, *command, "--out", training)
        assert message == (f"error: {training} holds a training run, not a {command[0]} run; "
                           "choose another output folder")
    assert (training / "cost.json").read_bytes() == before  # the training's time and energy are its own
    hessian = ["hessian", "--checkpoint", tiny_run, "--out", tmp_path / "h", "--top-k", "2", "--sequences", "4",
               "--lanczos-steps", "6", "--trace-samples", "2", "--density-runs", "1"]
    ok(*hessian, "--density")
    assert (tmp_path / "h" / "density.csv").exists() and (tmp_path / "h" / "density.png").exists()
    ok(*hessian)  # the same folder without a density: the earlier one must not pass for this run's
    assert not (tmp_path / "h" / "density.csv").exists() and not (tmp_path / "h" / "density.png").exists()
    assert "density_trace" not in json.loads((tmp_path / "h" / "summary.json").read_text())
    assert len(json.loads((tmp_path / "h" / "cost.json").read_text())["segments"]) == 1  # this run's cost alone
    for bad, message in ((["--trace-samples", "1"], "--trace-samples must be >= 2, got 1"),
                         (["--density-runs", "0"], "--density-runs must be >= 1, got 0"),
                         (["--lanczos-steps", "1000000000", "--out", tmp_path / "h2"],
                          "--lanczos-steps must be at most 500 (each step keeps a vector of every weight in memory), "
                          "got 1000000000")):
        assert user_error(monkeypatch, capsys, *hessian, *bad) == f"error: {message}"
    assert not (tmp_path / "h2").exists()  # refused before the folder is made
    for command, kind in ((["complexity"], "complexity"),
                          (["train", "--steps", "2", "--data-dir", data_dir], "training"),
                          (["compress", "--checkpoint", tiny_run, "--neurons", "0.5", "--data-dir", data_dir],
                           "compress")):
        message = user_error(monkeypatch, capsys, *command, "--out", tmp_path / "h")
        assert message.endswith(f"holds a hessian run, not a {kind} run; choose another output folder")


def test_ctrl_c_says_that_the_same_command_resumes(tmp_path, data_dir):
    import signal
    import time

    # SIGINT restored in the child: a process started in the background (CI) inherits it ignored
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys; from tinydot.cli import main; "
                              "signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'tinydot'; "
                              "main()", "train", "--out", "run", "--steps", "100000", "--d-model", "8",
                              "--n-layers", "1", "--data-dir", str(data_dir)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # training
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err.strip() == ("interrupted: the same command run again resumes where it stopped (train, lottery, study, "
                           "rightsize, compress and quantize keep their finished work)")


def test_country_option_is_checked_before_any_work(tmp_path):
    assert_user_error(run("--country", "XYZ", "complexity", "--out", str(tmp_path / "c")),
                      "unknown country code 'XYZ' (--country)")
    assert_user_error(run("--country", "", "complexity", "--out", str(tmp_path / "c")), "--country is empty")
    assert not (tmp_path / "c").exists()


# runs the CLI's main() on each command line in one fresh interpreter; after each: exit status, the
# error line, and which of torch, pandas and matplotlib have been imported so far
_WITHOUT_TORCH = """
import contextlib, io, json, sys
from tinydot.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv, err = ["tinydot", *argv], io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    results.append([code, err.getvalue().strip(), [m for m in ("torch", "pandas", "matplotlib") if m in sys.modules]])
print(json.dumps(results))
"""


def test_path_and_config_mistakes_are_refused_before_torch_is_imported(tmp_path, monkeypatch):
    # a mistyped path or config file is answered at once (~0.4 s), not after the ~4 s of importing
    # torch, pandas and matplotlib, and in the words the API uses for the same mistake
    import json
    from pathlib import Path

    from tinydot.checkpoint import load_model
    from tinydot.errors import TinydotError
    from tinydot.report.pages import write_report
    from tinydot.domains import get_domain
    from tinydot.study import Study, load_study

    def api_message(call, *args):
        with pytest.raises(TinydotError) as err:
            call(*args)
        return str(err.value)

    monkeypatch.chdir(tmp_path)  # where the CLI runs below
    (tmp_path / "file").write_text("not a folder")
    checkpoint = api_message(load_model, "nowhere")
    study = api_message(load_study, "nowhere")
    report = api_message(write_report, Path("nowhere"))
    domain = api_message(get_domain, "txt")
    preset = api_message(Study.preset, "fast")
    cases = [
        (["--help"], 0, ""),
        (["eval", "--checkpoint", "nowhere"], 2, checkpoint),
        (["hessian", "--checkpoint", "nowhere", "--out", "h"], 2, checkpoint),
        (["svcca", "--checkpoint", "nowhere", "--out", "v"], 2, checkpoint),
        (["compress", "--checkpoint", "nowhere", "--out", "c", "--heads", "0.5"], 2, checkpoint),
        (["quantize", "--checkpoint", "nowhere", "--out", "q"], 2, checkpoint),
        (["report", "nowhere"], 2, report),
        (["predict", "--study", "nowhere"], 2, study),
        (["rightsize", "--study", "nowhere"], 2, study),
        (["compare", "nowhere", "nowhere", "--out", "x"], 2, study),
        (["train", "--out", "t", "--config", "missing.json"], 2, "cannot read config file missing.json"),
        (["study", "--config", "missing.json"], 2, "cannot read config file missing.json"),
        (["study", "--out", "file/runs"], 2, "--out file/runs cannot be created: file is a file, not a folder"),
        (["lottery", "--out", "l", "--rewind", "soon"], 2, "--rewind must be 'init' or 'step:K'"),
        (["complexity", "--out", "m", "--seed", "-1"], 2, "--seed must be an integer between 0 and"),
        (["train", "--out", "t", "--domain", "txt"], 2, domain),
        (["complexity", "--out", "m", "--domain", "txt"], 2, domain),
        (["data", "info", "--domain", "txt"], 2, domain),
        (["study", "--domain", "txt"], 2, domain),
        (["study", "--preset", "fast"], 2, preset),
    ]
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, json.dumps([argv for argv, _, _ in cases])],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert len(results) == len(cases)
    api_words = {checkpoint, study, report, domain, preset}
    for (argv, code, message), (got_code, got_error, heavy) in zip(cases, results):
        assert (got_code, heavy) == (code, []), (argv, got_error)
        if message in api_words:
            assert got_error == f"error: {message}", argv
        else:
            assert message in got_error, (argv, got_error)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # nothing written
