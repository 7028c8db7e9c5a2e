"""Issue 13: what a hostile but realistic user tried, each case refused with one line before any work.

Most cases run the CLI in this process (typer's CliRunner: the command must raise a TinydotError,
whose one-line message `tinydot.cli.main` prints with exit status 2); a few run the real command
in a subprocess to check that path end to end.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinydot.checkpoint import save_model
from tinydot.cli import app
from tinydot.config import ModelConfig, PruneConfig, StudyConfig, TrainConfig, _Config
from tinydot.errors import ConfigError, TinydotError
from tinydot.evaluation import evaluate
from tinydot.io import atomic_write_text, check_writable_dir, check_writable_file
from tinydot.sampling import sample
from tinydot.study import STUDY_EDITION, Study, load_study
from tinydot.training import init_model

SRC = str(Path(__file__).parents[1] / "src")


def refused(args, message: str, env: dict | None = None) -> str:
    """Run `tinydot ARGS` in this process; it must fail with a one-line TinydotError containing `message`."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert isinstance(result.exception, TinydotError), (result.exception, result.output)
    text = str(result.exception)
    assert message in text and "\n" not in text, text
    return text


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "tinydot.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": SRC, **(env or {})}, timeout=120)


def assert_one_line_exit_2(result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def places(tmp_path):
    """An existing file, a folder whose name looks like a file, and the folder's listing before the test."""
    file, folder = tmp_path / "file", tmp_path / "grid.png"
    file.write_text("not a folder")
    folder.mkdir()
    return file, folder


def unchanged(tmp_path) -> bool:
    return sorted(p.name for p in tmp_path.rglob("*")) == ["file", "grid.png"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny tinyDOT checkpoint (evaluation refuses its arguments before using it)."""
    path = tmp_path_factory.mktemp("checkpoint") / "model.safetensors"
    save_model(path, init_model(ModelConfig(n_layers=1, d_model=8, d_mlp=16), 0))
    return path


# --------------------------------------------------------------------------- 3. --out and the cache folder

@pytest.mark.parametrize("command", [
    ["train", "--steps", "2"], ["lottery"], ["study"], ["complexity"], ["hessian", "--checkpoint", "nowhere"],
    ["svcca", "--checkpoint", "nowhere"], ["redundancy", "--model", "minilm", "--task", "ner"],
])
def test_out_folder_that_is_an_existing_file(command, places, tmp_path):
    file, _ = places
    refused([*command, "--out", file], f"--out {file} is an existing file, not a folder")
    assert unchanged(tmp_path)


@pytest.mark.parametrize("command", [["sample", "--checkpoint", "nowhere"], ["data", "show"],
                                     ["eval", "--checkpoint", "nowhere"]])
def test_out_file_under_an_existing_file_or_that_is_a_folder(command, places, tmp_path):
    file, folder = places
    refused([*command, "--out", file / "x.png"], f"--out {file / 'x.png'}: {file} is an existing file, not a folder")
    refused([*command, "--out", folder], f"--out {folder} is a folder; give a file path")
    assert unchanged(tmp_path)


def test_train_out_below_a_file(places, tmp_path):
    file, _ = places
    refused(["train", "--out", file / "run"], f"--out {file / 'run'} cannot be created: {file} is a file")
    assert unchanged(tmp_path)


def probe_fails(folder: Path) -> bool:
    try:
        check_writable_dir(folder)
    except ConfigError:
        return True
    return False


# /sys is a read-only file system in containers and on most hosts: not writable even for root
READ_ONLY = Path("/sys/tinydot-test")


@pytest.mark.skipif(not probe_fails(READ_ONLY), reason="/sys is writable here")
@pytest.mark.parametrize("command,out", [
    (["train", "--steps", "2"], READ_ONLY), (["study"], READ_ONLY), (["complexity"], READ_ONLY),
    (["lottery"], READ_ONLY), (["sample", "--checkpoint", "nowhere"], READ_ONLY / "x.png"),
    (["eval", "--checkpoint", "nowhere"], READ_ONLY / "x.json"),
])
def test_out_in_a_read_only_place(command, out):
    refused([*command, "--out", out], f"--out {out} is not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a mode-555 folder; /sys covers root above")
def test_out_in_a_folder_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    refused(["train", "--out", locked / "run", "--steps", "2"], f"--out {locked / 'run'} is not writable")
    refused(["data", "show", "--out", locked / "x.png"], f"--out {locked / 'x.png'} is not writable")


def test_the_writable_checks_create_nothing_and_accept_good_paths(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_writable_file(tmp_path / "c" / "x.png") == tmp_path / "c" / "x.png"
    assert check_writable_dir(tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_cache_folder_that_is_a_file(data_dir, places, tmp_path):
    file, _ = places
    refused(["data", "info", "--data-dir", data_dir], f"TINYDOT_CACHE {file} is an existing file, not a folder",
            env={"TINYDOT_CACHE": str(file)})
    result = run_cli("data", "info", "--data-dir", data_dir, env={"TINYDOT_CACHE": str(file)})
    assert_one_line_exit_2(result, "TINYDOT_CACHE")


@pytest.mark.parametrize("args,message", [
    (["train"], "Missing option '--out'. (see `"),
    (["data", "show", "--n", "abc", "--out", "x.png"], "Invalid value for '--n'"),
    (["trian", "--out", "x"], "No such command 'trian'. Did you mean 'train'?"),
    (["train", "--bogus", "3", "--out", "x"], "No such option: --bogus"),
    (["eval", "--checkpoint"], "Option '--checkpoint' requires an argument."),
])
def test_parser_errors_are_one_line_too(args, message, tmp_path):
    assert_one_line_exit_2(run_cli(*args, cwd=tmp_path), message)
    assert list(tmp_path.iterdir()) == []


def test_help_still_exits_0_and_a_bare_command_group_prints_its_help():
    helped = run_cli("train", "--help")
    assert helped.returncode == 0 and "--out" in helped.stdout and helped.stderr == ""
    hessian = run_cli("hessian", "--help").stdout  # flags as flags (typer's boxed help showed "--density <bool>")
    assert "--density " in hessian and "--top-k <int>" in hessian and "<bool>" not in hessian
    bare = run_cli("data")
    assert bare.returncode == 2 and "show" in bare.stdout + bare.stderr and "Traceback" not in bare.stderr


def test_real_commands_print_one_line(places, tmp_path):
    file, folder = places
    assert_one_line_exit_2(run_cli("lottery", "--out", file), "is an existing file, not a folder")
    assert_one_line_exit_2(run_cli("eval", "--checkpoint", "nowhere", "--out", folder), "is a folder")
    assert unchanged(tmp_path)


def test_eval_checks_out_and_temperature_before_the_evaluation(tiny_checkpoint, places, tmp_path):
    _, folder = places
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"TINYDOT_CACHE": str(cache)}
    refused(["eval", "--checkpoint", tiny_checkpoint, "--out", folder], "is a folder; give a file path", env=env)
    refused(["eval", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "results.csv"],
            "results.csv must end in .json (the results are written as JSON)", env=env)
    run = tmp_path / "run"  # a training run's folder: eval's JSON must not replace the files it reads back
    run.mkdir()
    (run / "config.json").write_text('{"model": {}, "train": {}}')
    refused(["eval", "--checkpoint", tiny_checkpoint, "--out", run / "config.json"],
            f"--out {run / 'config.json'}: config.json is a name run folders keep for their own files (a stage would "
            f"read it back); give another name (e.g. {run / 'eval.json'})", env=env)
    assert (run / "config.json").read_text() == '{"model": {}, "train": {}}'
    (run / "bits_4").mkdir()  # a quantize step folder holds no config.json; its results.json marks the step done
    refused(["eval", "--checkpoint", tiny_checkpoint, "--out", run / "bits_4" / "results.json"],
            "results.json is a name run folders keep for their own files", env=env)
    assert check_writable_file(run / "eval.json") == run / "eval.json"  # any other name is free
    assert check_writable_file(tmp_path / "results.json") == tmp_path / "results.json"  # outside a run too
    refused(["eval", "--checkpoint", tiny_checkpoint, "--temperature", "0"],
            "--temperature must be between 0.05 and 10, got 0.0", env=env)
    refused(["eval", "--checkpoint", tiny_checkpoint, "--per-class", "100000"],
            "--per-class must be between 1 and 1000", env=env)
    assert list(cache.iterdir()) == []  # no data parsed, no classifier trained: nothing was started


# --------------------------------------------------------------------------- 5. config types

@pytest.mark.parametrize("config,values,message", [
    (TrainConfig, {"lr": "0.1"}, "train lr must be a finite number, got '0.1' (str)"),
    (TrainConfig, {"grad_clip": None}, "train grad_clip must be a finite number, got null"),
    (TrainConfig, {"lr": True}, "train lr must be a finite number, got True (bool)"),
    (TrainConfig, {"weight_decay": float("inf")}, "train weight_decay must be a finite number, got inf"),
    (TrainConfig, {"steps": 10.0}, "train steps must be an integer, got 10.0 (float)"),
    (StudyConfig, {"held_out_fraction": "0.1"}, "study held_out_fraction must be a finite number, got '0.1'"),
    (StudyConfig, {"measures": 5}, "study measures must be a list of strings, got "),
    (StudyConfig, {"measures": ["L", 3]}, "study measures must be a list of strings, got ('L', 3)"),
    (StudyConfig, {"balanced": "yes"}, "study balanced must be true or false, got 'yes' (str)"),
    (StudyConfig, {"bins": True}, "study bins must be an integer, got True (bool)"),
    (PruneConfig, {"prunable": 5}, "prune prunable must be a list of strings or null, got 5 (int)"),
    (PruneConfig, {"prunable": []}, "prune prunable must list at least one pattern"),
    (PruneConfig, {"controls": "false"}, "prune controls must be true or false, got 'false' (str)"),
    (PruneConfig, {"levels": True}, "prune levels must be an integer, got True (bool)"),
    (PruneConfig, {"scope": 1}, "prune scope must be a string, got 1 (int)"),
    (ModelConfig, {"d_model": "64"}, "model d_model must be an integer, got '64' (str)"),
])
def test_config_types_are_checked_on_construction(config, values, message):
    with pytest.raises(ConfigError) as caught:
        config.from_dict(values)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@dataclass(frozen=True)
class Example(_Config):
    """Field kinds the tinydot configs do not all use yet: a list of integers, an optional number."""

    classes: tuple[int, ...] = (1, 5)
    rate: float | None = None

    def __post_init__(self):
        self._check_types("example")


def test_every_kind_of_field_is_checked():
    assert Example(classes=(), rate=0.5).rate == 0.5 and Example().rate is None
    with pytest.raises(ConfigError, match=r"example classes must be a list of integers, got \(1, True\) \(tuple\)"):
        Example(classes=(1, True))
    with pytest.raises(ConfigError, match="example rate must be a finite number or null, got 'x' \\(str\\)"):
        Example(rate="x")

    @dataclass(frozen=True)
    class Unknown(_Config):
        when: bytes = b""

        def __post_init__(self):
            self._check_types("unknown")

    with pytest.raises(TypeError, match="no type check for 'bytes'"):
        Unknown()


def test_good_config_values_still_pass():
    assert TrainConfig(lr=1, grad_clip=0).lr == 1  # an integer is a number
    assert PruneConfig(prunable=["head_*"]).prunable == ("head_*",)
    assert StudyConfig(measures="L").measures == ("L",)
    assert json.loads(json.dumps(TrainConfig().to_dict())) == TrainConfig().to_dict()


def test_study_config_file_with_a_bad_type_fails_before_any_folder(tmp_path):
    (tmp_path / "prunable.json").write_text(json.dumps({"prune": {"prunable": 5}}))
    refused(["study", "--config", tmp_path / "prunable.json", "--out", tmp_path / "runs"],
            "prune prunable must be a list of strings or null, got 5 (int)")
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- 6. seeds, 7. temperatures, 8. sizes

SEED_ERROR = "--seed must be an integer between 0 and 4294967295, got -1"


@pytest.mark.parametrize("command,message", [
    (["data", "show", "--out", "{tmp}/x.png"], SEED_ERROR),
    (["complexity", "--out", "{tmp}/c"], SEED_ERROR),
    (["hessian", "--checkpoint", "nowhere", "--out", "{tmp}/h"], SEED_ERROR),
    (["sample", "--checkpoint", "nowhere", "--out", "{tmp}/x.png"], SEED_ERROR),
    (["train", "--out", "{tmp}/t"], "train seed must be an integer between 0 and 4294967295, got -1"),
    (["redundancy", "--model", "minilm", "--task", "ner", "--out", "{tmp}/r"], SEED_ERROR),
])
def test_negative_seeds_are_refused_everywhere(command, message, tmp_path):
    refused([c.format(tmp=tmp_path) for c in command] + ["--seed", "-1"], message)
    assert list(tmp_path.iterdir()) == []


def test_seed_rule_in_the_api(tiny_checkpoint):
    from tinydot.checkpoint import load_model

    model = load_model(tiny_checkpoint)
    # the API names its argument; the CLI's message names the option (test_negative_seeds_are_refused_everywhere)
    with pytest.raises(ConfigError, match="^seed must be an integer between 0 and 4294967295, got -1"):
        sample(model, [3], seed=-1)
    with pytest.raises(ConfigError, match="got 4294967296"):
        sample(model, [3], seed=2**32)
    with pytest.raises(ConfigError, match="^seed must be"):
        evaluate(model, seed=-1)
    assert len(sample(model, [3], seed=2**32 - 1)) == 1


@pytest.mark.parametrize("temperature", ["inf", "1e-300", "nan", "0", "-1", "11"])
def test_sampling_temperatures_outside_the_range(temperature, tmp_path):
    refused(["sample", "--checkpoint", "nowhere", "--out", tmp_path / "x.png", "--temperature", temperature],
            f"--temperature must be between 0.05 and 10, got {float(temperature)}")


def test_sampling_at_the_ends_of_the_temperature_range(tiny_checkpoint):
    from tinydot.checkpoint import load_model

    model = load_model(tiny_checkpoint)
    for temperature in (0.05, 10):
        strokes = sample(model, [1, 2], temperature=temperature, seed=0)
        assert len(strokes) == 2 and (strokes.lengths >= 1).all()


def test_data_show_n_is_bounded(tmp_path):
    refused(["data", "show", "--n", "100000", "--out", tmp_path / "x.png"], "--n must be between 1 and 400, got 100000")


# --------------------------------------------------------------------------- 8. predict on a damaged study folder

@pytest.fixture
def study_folder(tmp_path) -> Path:
    """A study folder as run_study leaves it: config.json, one job.json per job and jobs.csv of those rows."""
    import pandas as pd

    folder = tmp_path / "study-x"
    rows = [{"measure": "L", "bin": b, "seed": 0, "complexity": 20.0 + b, "prunable": 100,
             "dense_unused_fraction": 0.1 * b} for b in range(3)]
    for row in rows:
        job = folder / "jobs" / f"L-bin{row['bin']}-seed0"
        job.mkdir(parents=True)
        (job / "job.json").write_text(json.dumps(row))
    (folder / "config.json").write_text(json.dumps({**Study().to_dict(), "edition": STUDY_EDITION}))
    pd.DataFrame(rows).to_csv(folder / "jobs.csv", index=False)
    return folder


def test_an_intact_study_folder_loads(study_folder):
    study, jobs = load_study(study_folder)
    assert study == Study() and len(jobs) == 3 and jobs["bin"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("name,damage,message", [
    ("jobs.csv", lambda text: text[:-7], "jobs.csv is damaged (truncated: 3 rows for 3 finished jobs)"),
    ("jobs.csv", lambda text: "".join(text.splitlines(keepends=True)[:-1]), "(truncated: 2 rows for 3"),
    ("jobs.csv", lambda text: text.splitlines(keepends=True)[0], "(truncated: 0 rows for 3"),
    ("jobs.csv", lambda text: "", "is damaged: No columns to parse from file"),
    ("jobs.csv", lambda text: text.replace("L,1,", "L,1,7,7,", 1), "is damaged: Error tokenizing data"),
    ("config.json", lambda text: text[: len(text) // 2], "is damaged: "),
    ("config.json", lambda text: "[1, 2]", "config.json is damaged (not a JSON object)"),
])
def test_predict_on_a_damaged_study_folder(name, damage, message, study_folder):
    path = study_folder / name
    path.write_text(damage(path.read_text()))
    with pytest.raises(TinydotError) as caught:
        load_study(study_folder)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "re-run `tinydot study`" in str(caught.value)


def test_predict_cli_on_a_damaged_folder(study_folder, data_dir):
    (study_folder / "config.json").write_text("{")
    assert_one_line_exit_2(run_cli("predict", "--study", study_folder), "is damaged")


# --------------------------------------------------------------------------- 9. stale temporaries, empty run folders

KILLED_WRITER = """
import sys, time
from tinydot.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_a_killed_atomic_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "results.csv"
    env = {**os.environ, "PYTHONPATH": SRC}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                              env=env)
    temporary = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    assert temporary.exists() and temporary.stat().st_size == 0 and not target.exists()
    other = tmp_path / ".results.b.abcdefgh.tmp.csv"  # another target's temporary (results.b.csv) stays
    other.write_text("")
    os.utime(other, (time.time() - 3600,) * 2)
    time.sleep(0.05)  # the next process starts after the killed write
    rewrite = "import sys; from tinydot.io import atomic_write_text; atomic_write_text(sys.argv[1], 'a,b\\n')"
    subprocess.run([sys.executable, "-c", rewrite, str(target)], env=env, check=True, timeout=60)
    assert not temporary.exists() and target.read_text() == "a,b\n" and other.exists()


def test_a_temporary_newer_than_this_process_is_left_alone(tmp_path):
    live = tmp_path / ".summary.abcdefgh.tmp.json"  # as if another writer were busy with it right now
    live.write_text("")
    stale = tmp_path / ".summary.zyxwvuts.tmp.json"
    stale.write_text("")
    os.utime(stale, (time.time() - 3600,) * 2)
    atomic_write_text(tmp_path / "summary.json", "{}")
    assert live.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".summary.abcdefgh.tmp.json", "summary.json"]


def test_a_study_refused_for_bins_versus_samples_leaves_no_folder(data_dir, tmp_path):
    (tmp_path / "bins.json").write_text(json.dumps({"study": {"bins": 70_000}}))
    result = run_cli("study", "--config", "bins.json", "--out", "runs", cwd=tmp_path)
    assert_one_line_exit_2(result, "70000 bins are more than the")
    assert not (tmp_path / "runs").exists()


def test_an_os_error_on_a_users_path_is_one_line_too():
    # the CLI's last line of defence, e.g. for a disk that fills up mid-run; a missing file stays a traceback
    code = ("import tinydot.cli as cli\n"
            "def app(**options):\n    raise OSError({errno}, 'message', 'x.csv')\n"
            "cli.app = app\ncli.main()\n")
    run = lambda errno: subprocess.run([sys.executable, "-c", code.format(errno=errno)], capture_output=True,  # noqa: E731
                                       text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert_one_line_exit_2(run(28), "x.csv: message")  # ENOSPC
    not_the_users = run(2)  # ENOENT: tinydot checks the paths it reads, so this would be a bug
    assert not_the_users.returncode == 1 and "Traceback" in not_the_users.stderr


# --------------------------------------------------------------------------- 10. the Python API's inputs

def test_api_inputs_get_one_line_errors(tiny_checkpoint, data_dir, tmp_path):
    import dataclasses

    import numpy as np

    from tinydot.checkpoint import load_model
    from tinydot.complexity import quantile_bins
    from tinydot.data import load_strokes
    from tinydot.data.batching import encode
    from tinydot.domains import DOMAINS
    from tinydot.errors import DataError
    from tinydot.evaluation import evaluate_nll
    from tinydot.training import train

    model, test = load_model(tiny_checkpoint), load_strokes("test")
    text_model = init_model(dataclasses.replace(DOMAINS["text"].model_config, n_layers=1, d_model=8, d_mlp=16), 0)
    with pytest.raises(ConfigError, match="^sample draws digits from a strokes model \\(TinyDOT\\), not a TextDOT$"):
        sample(text_model, [3])
    with pytest.raises(ConfigError, match="^evaluate scores a strokes model \\(TinyDOT\\), not a str; evaluate_nll"):
        evaluate(str(tiny_checkpoint))  # a path, not a model
    with pytest.raises(ConfigError, match=r"^unknown domain 'txt' \(did you mean text\?\); choose strokes or text"):
        load_model(tiny_checkpoint, domain="txt")
    with pytest.raises(ConfigError, match="^no sequences to evaluate"):
        evaluate_nll(model, test.subset([]))
    with pytest.raises(ConfigError, match="^tokens_per_batch must be a positive integer, got 0"):
        evaluate_nll(model, test, tokens_per_batch=0)
    with pytest.raises(ConfigError, match="^labels must give one class per value: 10 labels for 500 values"):
        quantile_bins(np.arange(500.0), 3, labels=test.labels[:10])
    with pytest.raises(ConfigError, match="^the data hold digit class 9 but the model config has n_classes 3"):
        encode(test, ModelConfig(n_classes=3))
    with pytest.raises(ConfigError, match="max_move and n_classes are stroke options"):
        ModelConfig(domain="text", vocab_size=10, n_classes=3)  # a text model would ignore it
    wide = test.subset([0, 1])  # subset copies: the split's arrays stay as they are
    wide.steps[1, 3, 1] = -40  # the archives allow moves up to 127 pixels, the model's embeddings 28
    with pytest.raises(ConfigError, match="^the data hold a move of 40 pixels but the model config has max_move 28; "
                                          "set max_move >= 40$"):
        encode(wide, ModelConfig())
    assert encode(wide, ModelConfig(max_move=40)).max_move == 40
    with pytest.raises(DataError, match="^select sequences with a 1-d array of positions"):
        test.subset(5)
    with pytest.raises(DataError, match="^position 10000 is out of range for 10000 sequences"):
        test.subset([0, 10_000])
    assert test.subset(slice(5, 8)).fingerprint == test.subset([5, 6, 7]).fingerprint != test.subset([5, 6]).fingerprint
    assert test.subset([]).fingerprint == test.subset(slice(0)).fingerprint != test.subset([0]).fingerprint  # empty too
    assert (test.subset([-1]).lengths == test.lengths[-1:]).all()

    from tinydot.study import run_study

    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="a-file is an existing file, not a folder"):
        run_study(Study.preset("quick"), tmp_path / "a-file")

    # a training run's resume point is not a model: the message says which file is
    run = tmp_path / "run"
    train(test.subset(np.arange(50)), run, model.cfg, TrainConfig(steps=1, eval_every=0), progress=False)
    with pytest.raises(TinydotError, match="is a training run's resume point .* give the run folder or its "
                                           "model.safetensors"):
        load_model(run / "checkpoint.safetensors")


def test_api_takes_one_value_where_it_takes_several(tiny_checkpoint, data_dir, tmp_path):
    import pandas as pd

    from tinydot.compress import run_quantize
    from tinydot.fits import Line
    from tinydot.runs import write_svcca

    similarity = write_svcca(str(tiny_checkpoint), tmp_path / "svcca", sequences=10)["similarity"]  # not per character
    assert similarity.shape == (2, 2)  # one layer and the embeddings, against themselves
    table = run_quantize(tiny_checkpoint, tmp_path / "q", bits=8, method="rtn", eval_sequences=10)
    assert table["bits"].tolist() == [32, 8]
    line = Line(pd.DataFrame({"L": [1.0, 2.0, 3.0, 4.0]}), [1.0, 2.1, 2.9, 4.2])
    assert line.predict(2.5) == line.predict([2.5])
