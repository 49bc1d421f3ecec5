"""Shared test set-up (at the root so that it also covers the notebooks nbval runs).

Tests never touch the network and never write into the repository's runs/.
"""

import os
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests run two at a time (pytest -n 2) on a 2-core machine: two torch threads per process
# oversubscribe the cores and make small training loops many times slower. Kernels started by
# nbval inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Notebooks run by nbval (and anything else that does not ask for the fixture below) write into a
# temporary run directory of this process (each xdist worker has its own), never into runs/.
os.environ["ARTSIM_RUN_DIR"] = tempfile.mkdtemp(prefix="artsim-test-run-")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A fresh run directory for the test: ``$ARTSIM_RUN_DIR`` points every stage at it."""
    d = tmp_path / "run"
    monkeypatch.setenv("ARTSIM_RUN_DIR", str(d))
    return d


def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist loadscope`` (``make test``), the nine notebooks are one scope: nbval runs them
    on one worker, in order, in one run directory, as ``artsim run`` does; a notebook reads what the
    earlier ones wrote and never rebuilds it (a missing input says which stage to run)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class StudyInOrder(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            if nodeid.startswith("notebooks/"):
                return "notebooks"
            return super()._split_scope(nodeid)

    return StudyInOrder(config, log)


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the slow tests (the notebooks, the workflow runs, SLURM, the rehearsal); make test does",
    )


def pytest_collection_modifyitems(config, items):
    """Slow tests are opt-in: a plain ``pytest`` runs the unit tests (a couple of minutes), ``--slow``
    (``make test``, CI) runs everything. The notebooks nbval runs are slow tests too."""
    for item in items:
        if item.nodeid.startswith("notebooks/"):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--slow") or config.option.markexpr:
        return  # everything, or what the -m expression asks for
    skip = pytest.mark.skip(reason="slow: run with --slow (make test does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
