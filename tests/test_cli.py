"""The CLI as a user runs it: real subprocesses, exit codes and one-line errors."""

import os
import subprocess
import sys

import pytest


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
    out = tmp_path / "grid.png"
    result = run("data", "show", "--split", "test", "--n", "16", "--digit", "7", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,message", [
    (["data", "show", "--split", "valid", "--out", "x.png"], "unknown split 'valid'"),
    (["data", "show", "--digit", "12", "--out", "x.png"], "--digit must be between 0 and 9"),
    (["data", "show", "--n", "0", "--out", "x.png"], "--n must be at least 1"),
    (["data", "show", "--out", "x.jpg"], "must end in .png"),
])
def test_bad_arguments_give_one_line_errors(args, message, data_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinydot.cli", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert_user_error(result, message)
    assert not list(tmp_path.iterdir())


def test_missing_data_dir(tmp_path):
    result = run("data", "info", "--data-dir", str(tmp_path / "nowhere"))
    assert_user_error(result, "lacks train-padded-trailing.tar.gz")
