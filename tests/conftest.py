"""Shared fixtures. Real-data tests read $TINYDOT_DATA (the Makefile points it at ../shared)."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run by default, so CI cannot turn red without a
# change; TINYDOT_HYPOTHESIS=explore draws new random examples each run (for hunting bugs locally).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile({"explore": "explore"}.get(os.environ.get("TINYDOT_HYPOTHESIS", ""), "repeatable"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep the tests' parsed caches and downloads out of the user's cache folder."""
    os.environ["TINYDOT_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = os.environ.get("TINYDOT_DATA")
    if not folder:
        message = "real stroke data needed: set TINYDOT_DATA to the mnist-strokes folder"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(folder)


@pytest.fixture(scope="session")
def train(data_dir):
    from tinydot.data import load_strokes

    return load_strokes("train", data_dir)


@pytest.fixture(scope="session")
def test_split(data_dir):
    from tinydot.data import load_strokes

    return load_strokes("test", data_dir)
