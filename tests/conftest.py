"""Shared fixtures. Tests never touch the network and never write into the repository's runs/."""
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A fresh run directory for the test: ``$ARTSIM_RUN_DIR`` points every stage at it."""
    d = tmp_path / "run"
    monkeypatch.setenv("ARTSIM_RUN_DIR", str(d))
    return d
