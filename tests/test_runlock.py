"""One writer per run directory (artsim_lib.io.runlock) and clean interrupts of `artsim run`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artsim_lib.io import runlock


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _snapshot(*folders):
    """Every file under the folders with its bytes and mtime."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


# -- the lock itself ---------------------------------------------------------------------
def test_second_acquire_is_refused_naming_the_holder(tmp_path):
    with runlock.RunLock.acquire([tmp_path / "run"], command="artsim run --profile smoke") as lock:
        with pytest.raises(runlock.RunLocked) as err:
            runlock.RunLock.acquire([tmp_path / "run"])
        msg = str(err.value)
        assert f"pid {os.getpid()}" in msg and "artsim run --profile smoke" in msg
        assert "nothing was changed" in msg
        assert json.loads((tmp_path / "run" / runlock.LOCK_NAME).read_text())["token"] == lock.token
    assert not (tmp_path / "run" / runlock.LOCK_NAME).exists()  # released


def test_refused_acquire_takes_no_lock_at_all(tmp_path):
    with runlock.RunLock.acquire([tmp_path / "b"]):
        with pytest.raises(runlock.RunLocked):
            runlock.RunLock.acquire([tmp_path / "a", tmp_path / "b"])
        assert not (tmp_path / "a" / runlock.LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_broken_with_a_message(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = {"pid": _dead_pid(), "host": runlock._host(), "time": 0, "command": "artsim run", "token": "x"}
    (run / runlock.LOCK_NAME).write_text(json.dumps(stale))
    lock = runlock.RunLock.acquire([run])
    assert lock.broken and "stale lock" in lock.broken[0] and str(stale["pid"]) in lock.broken[0]
    lock.release()


def test_reused_pid_is_not_taken_for_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    me = {"pid": os.getpid(), "start": "1", "host": runlock._host(), "time": 0, "token": "x"}
    (run / runlock.LOCK_NAME).write_text(json.dumps(me))  # our pid, another start time
    runlock.RunLock.acquire([run]).release()


def test_a_lock_from_another_host_is_kept_and_explained(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = {"pid": 1, "host": "elsewhere", "time": 0, "command": "artsim run", "token": "x"}
    (run / runlock.LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(runlock.RunLocked, match=r"elsewhere.*remove .*\.artsim-run\.lock"):
        runlock.RunLock.acquire([run])
    assert json.loads((run / runlock.LOCK_NAME).read_text()) == other


def test_live_child_keeps_the_lock_when_the_parent_died(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    info = {"pid": _dead_pid(), "host": runlock._host(), "child_pid": os.getpid(), "time": 0, "token": "x"}
    (run / runlock.LOCK_NAME).write_text(json.dumps(info))
    with pytest.raises(runlock.RunLocked, match="Snakemake pid"):
        runlock.RunLock.acquire([run])


def test_write_params_refuses_under_another_run(tmp_path):
    run, target = tmp_path / "run", tmp_path / "run" / "params.resolved.yaml"
    with runlock.RunLock.acquire([run]) as lock:
        with pytest.raises(runlock.RunLocked, match="not writing"):
            runlock.write_params(target, "a: 1\n", run, token="someone-else")
        assert not target.exists()
        assert runlock.write_params(target, "a: 1\n", run, token=lock.token)
        assert not runlock.write_params(target, "a: 1\n", run, token=None)  # unchanged: no check


def test_clean_leftovers_removes_temp_files_only(tmp_path):
    keep = [tmp_path / "reports" / "08-siamese.ipynb", tmp_path / "run" / "a.tmp", tmp_path / "run" / ".hidden"]
    junk = [
        tmp_path / "reports" / ".08-siamese.ipynb.k2j4_x9a.tmp.ipynb",
        tmp_path / "run" / "manifest" / ".raw.parquet.abcdefgh.tmp.parquet",
        tmp_path / "run" / ".params.resolved.yaml.a1b2c3d4.tmp.yaml",
    ]
    for p in keep + junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    (tmp_path / "run" / ".shards.zzzzzzzz.tmp").mkdir()
    removed = runlock.clean_leftovers([tmp_path / "reports", tmp_path / "run"])
    assert sorted(map(str, removed)) == sorted(map(str, junk + [tmp_path / "run" / ".shards.zzzzzzzz.tmp"]))
    assert all(p.exists() for p in keep)


def test_clear_snakemake_locks_only_for_our_outputs(tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("reports/smoke/01-a.ipynb\nreports/smoke/index.html\n")
    (locks / "0.input.lock").write_text("notebooks/01-a.ipynb\n")
    (locks / "1.output.lock").write_text("reports/full/01-a.ipynb\n")
    (locks / "1.input.lock").write_text("notebooks/01-a.ipynb\n")
    removed = runlock.clear_snakemake_locks(tmp_path, [tmp_path / "reports" / "smoke", tmp_path / "runs" / "smoke"])
    assert sorted(p.name for p in removed) == ["0.input.lock", "0.output.lock"]
    assert sorted(p.name for p in locks.iterdir()) == ["1.input.lock", "1.output.lock"]


# -- artsim run ---------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path, make_project):
    return make_project(tmp_path / "proj")


def test_a_refused_run_changes_nothing_and_names_the_holder(project, artsim):
    run, reports = project / "runs" / "smoke", project / "reports" / "smoke"
    run.mkdir(parents=True)
    (run / "params.resolved.yaml").write_text("# the live run's params\n")
    reports.mkdir(parents=True)
    (reports / "index.html").write_text("<p>live</p>")
    with runlock.RunLock.acquire([run], command="artsim run --profile smoke (the live one)"):
        before = _snapshot(run, reports)
        proc = artsim(project, "run", "--set", "evaluation.n_boot=50", check=False)
        assert proc.returncode == 3
        assert "in use by artsim run --profile smoke (the live one)" in proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr
        assert _snapshot(run, reports) == before
        assert not (run / "params").exists()  # nor the per-stage params files
    assert not (run / runlock.LOCK_NAME).exists()


def test_report_is_refused_while_a_run_holds_the_reports_dir(project, artsim):
    reports = project / "reports" / "smoke"
    with runlock.RunLock.acquire([reports]):
        proc = artsim(project, "report", check=False)
    assert proc.returncode == 3 and "in use by" in proc.stderr
    assert not (reports / "index.html").exists()


def test_dry_run_writes_nothing_and_plans_changed_params(project, artsim):
    proc = artsim(project, "run", "-n")
    assert not (project / "runs").exists() and not (project / "reports").exists()
    assert "stage_01_a" in proc.stdout + proc.stderr
    artsim(project, "run", "--until", "01")
    params = project / "runs" / "smoke" / "params.resolved.yaml"
    before = params.read_bytes(), params.stat().st_mtime_ns
    proc = artsim(project, "run", "-n", "--until", "01")
    assert "Nothing to be done" in proc.stdout + proc.stderr  # unchanged params: nothing to do
    proc = artsim(project, "run", "-n", "--until", "01", "--set", "preprocess.size=64")
    assert "stage_01_a" in proc.stdout + proc.stderr  # changed params: the stage would re-run
    assert (params.read_bytes(), params.stat().st_mtime_ns) == before


@pytest.fixture
def sleeping_project(tmp_path, make_project):
    return make_project(
        tmp_path / "proj",
        stages=("01-a", "02-slow"),
        bodies={
            "02-slow": "import time\nfrom pathlib import Path\nPath(P.run_path, 'slow-started').touch()\n"
            "time.sleep(120)"
        },
    )


@pytest.fixture
def start(project_env):
    """``start(root, *args)``: ``artsim ARGS`` on the project at ``root`` in its own session, not waited for."""

    def start(root, *args):
        return subprocess.Popen(
            [sys.executable, "-m", "artsim_lib", *args],
            cwd=root,
            env=project_env(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    return start


def _wait_for(path, proc, limit=240):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() - t0 < limit, "the stage never started"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_leaves_no_lock_and_no_temp_file(sleeping_project, start):
    root = sleeping_project
    proc = start(root, "run")
    _wait_for(root / "runs" / "smoke" / "slow-started", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert not list((root / ".snakemake" / "locks").glob("*.lock"))
    assert not (root / "runs" / "smoke" / runlock.LOCK_NAME).exists()
    leftovers = [p for p in root.rglob("*") if runlock.TEMP_RE.match(p.name)]
    assert leftovers == []
    # the next run needs no manual step (no --unlock): it starts, and we stop it again
    (root / "runs" / "smoke" / "slow-started").unlink()
    again = start(root, "run")
    _wait_for(root / "runs" / "smoke" / "slow-started", again)
    os.killpg(again.pid, signal.SIGINT)
    assert again.wait(timeout=120) == 130


@pytest.mark.slow
def test_after_sigkill_the_next_run_cleans_up_and_goes_on(sleeping_project, start, artsim, write_notebook):
    root = sleeping_project
    proc = start(root, "run")
    _wait_for(root / "runs" / "smoke" / "slow-started", proc)
    info = json.loads((root / "runs" / "smoke" / runlock.LOCK_NAME).read_text())
    # a killed machine: artsim, Snakemake and the job die at once, nothing cleans up
    fake_tmp = root / "reports" / "smoke" / ".02-slow.ipynb.abcd1234.tmp.ipynb"
    for group in (proc.pid, info["child_pid"]):
        os.killpg(group, signal.SIGKILL)
    proc.wait(timeout=30)
    fake_tmp.write_text("{}")
    assert list((root / ".snakemake" / "locks").glob("*.lock"))  # Snakemake's lock is stale now
    root.joinpath("notebooks", "02-slow.ipynb").unlink()
    write_notebook(root / "notebooks" / "02-slow.ipynb", "02-slow", "print('quick now')")
    out = artsim(root, "run")
    text = out.stdout + out.stderr
    assert "stale lock" in text and "LockException" not in text
    assert not fake_tmp.exists()
    assert (root / "reports" / "smoke" / "02-slow.ipynb").is_file()


# -- interrupts, on a stand-in for Snakemake ---------------------------------------------
CHILD = """
import signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
def on_int(signum, frame):
    log.write_text(log.read_text() + "INT\\n")
    if sys.argv[2] == "obeys":
        log.write_text(log.read_text() + "cleaned up\\n")
        sys.exit(1)
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "stubborn" else signal.SIG_DFL)
log.write_text("started\\n")
time.sleep(60)
"""


def _interrupt_soon(log):
    import threading

    def fire():
        while not log.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches artsim only (Snakemake has its group)

    threading.Thread(target=fire, daemon=True).start()


@pytest.mark.parametrize("behaviour,expected", [("obeys", "SIGINT"), ("stubborn", "SIGKILL")])
def test_ctrl_c_is_forwarded_once_then_escalated(tmp_path, behaviour, expected):
    from artsim_lib import cli

    log = tmp_path / "child.log"
    _interrupt_soon(log)
    started = []
    rc, how = cli.run_interruptible(
        [sys.executable, "-c", CHILD, str(log), behaviour], tmp_path, on_start=started.append, grace=(0.5, 0.5)
    )
    assert how == expected and started
    lines = log.read_text().splitlines()
    assert lines.count("INT") == 1  # forwarded once: a second SIGINT could cut Snakemake's clean-up short
    if behaviour == "obeys":
        assert rc == 1 and lines[-1] == "cleaned up"
    else:
        assert rc == -signal.SIGKILL


def test_a_notebook_run_on_its_own_does_not_overwrite_a_live_runs_params(run_dir, smoke_params, monkeypatch):
    from artsim_lib.io import provenance

    P = smoke_params()
    provenance.start_stage("01-x", P)
    before = P.run.params_file.read_bytes()
    with runlock.RunLock.acquire([run_dir]) as lock:
        with pytest.raises(runlock.RunLocked, match="not writing"):
            provenance.start_stage("01-x", smoke_params("seed=9"))
        assert P.run.params_file.read_bytes() == before
        provenance.start_stage("01-x", P)  # the run's own stage: unchanged params, no check
        monkeypatch.setenv(runlock.LOCK_ENV, lock.token)
        provenance.start_stage("01-x", smoke_params("seed=9"))  # its job may
    assert b"seed: 9" in P.run.params_file.read_bytes()
