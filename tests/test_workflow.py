"""End to end: `artsim run` on a throwaway project with two tiny notebooks (Snakemake +
papermill), incremental reruns, a failing stage, the rerun sets, and notebooks that read as reports."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import REPO, artsim, make_project, write_notebook

# What the kernel's libraries write while a stage runs (transformers' bars, tqdm's IProgress
# warning, torchvision fallbacks, log lines): the stage log's, never the notebook's.
NOISY = """
import logging, warnings
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="Loading weights"):
    pass
warnings.warn("a fallback warning")
logging.getLogger("transformers.x").warning("a library warning")
print("ran in", os.path.dirname(os.getcwd()))
"""


def assert_reads_as_a_report(ipynb, root):
    """An executed notebook (and its HTML) shows no stderr blocks (progress bars, warnings) and
    no absolute path of the project."""
    nb = json.loads(Path(ipynb).read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    stderr = ["".join(o["text"])[:200] for o in outputs if o.get("name") == "stderr"]
    assert not stderr, stderr
    text = json.dumps(outputs)
    assert "it/s]" not in text and "Warning" not in text and "a library warning" not in text
    assert str(root) not in text and str(root) not in Path(ipynb).with_suffix(".html").read_text()


def mtimes(reports, stages):
    return {s: (reports / f"{s}.ipynb").stat().st_mtime_ns for s in stages}


# -- tests ---------------------------------------------------------------------
@pytest.mark.slow
def test_run_end_to_end_and_incremental(tmp_path):
    root = make_project(
        tmp_path / "proj",
        bodies={"01-a": "import os, sys\nprint('PREFIX=' + sys.prefix)\nprint('CWD=' + os.getcwd())\n" + NOISY},
    )
    reports = root / "reports" / "smoke"
    stages = ["01-a", "02-b"]

    artsim(root, "run", "--profile", "smoke")
    for s in stages:
        assert (reports / f"{s}.ipynb").is_file() and (reports / f"{s}.html").is_file()
        assert (root / "runs" / "smoke" / "stages" / f"{s}.json").is_file()
    assert (reports / "index.html").is_file()
    assert (root / "runs" / "smoke" / "params.resolved.yaml").is_file()
    out = (reports / "01-a.ipynb").read_text()
    assert f"PREFIX={sys.prefix}" in out  # the kernel is this interpreter (the venv)
    assert "CWD=notebooks\\n" in out  # notebooks run from notebooks/, shown relative to the root
    assert_reads_as_a_report(reports / "01-a.ipynb", root)
    log = (reports / "logs" / "01-a.log").read_text()
    assert "Loading weights: 100%" in log and "a fallback warning" in log  # progress: in the log
    assert 'src="http' not in (reports / "01-a.html").read_text()
    index = (reports / "index.html").read_text()
    for href in re.findall(r'href="([^"#]+)"', index):
        assert (reports / href).is_file(), href

    before = mtimes(reports, stages)
    proc = artsim(root, "run", "--profile", "smoke")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert mtimes(reports, stages) == before

    nb = root / "notebooks" / "02-b.ipynb"
    write_notebook(nb, "02-b", "print('edited')")
    artsim(root, "run", "--profile", "smoke")
    after = mtimes(reports, stages)
    assert after["01-a"] == before["01-a"] and after["02-b"] > before["02-b"]

    # a param both stages read (preprocess.*, in each one's params file): both re-run
    artsim(root, "run", "--profile", "smoke", "--set", "preprocess.size=96")
    final = mtimes(reports, stages)
    assert final["01-a"] > after["01-a"] and final["02-b"] > after["02-b"]
    assert "size: 96" in (root / "runs" / "smoke" / "params.resolved.yaml").read_text()
    record = json.loads((root / "runs" / "smoke" / "stages" / "02-b.json").read_text())
    assert record["summary"]["size"] == 96  # the notebook saw the override


@pytest.mark.slow
def test_failing_stage_keeps_notebook(tmp_path):
    root = make_project(
        tmp_path / "proj", stages=("01-boom",), bodies={"01-boom": "raise ValueError('boom in the notebook')"}
    )
    reports = root / "reports" / "smoke"
    proc = artsim(root, "run", check=False)
    assert proc.returncode != 0
    failed = reports / "logs" / "01-boom.failed.ipynb"
    assert failed.is_file()
    assert "boom in the notebook" in failed.read_text()
    assert (reports / "logs" / "01-boom.failed.html").is_file()
    message = proc.stdout + proc.stderr
    assert str(failed) in message and "ValueError: boom in the notebook" in message
    assert not (reports / "01-boom.ipynb").exists()
    index = (reports / "index.html").read_text()  # written anyway, to show the failure
    assert "failed" in index and 'href="logs/01-boom.failed.html"' in index

    write_notebook(root / "notebooks" / "01-boom.ipynb", "01-boom", "print('fixed')")
    artsim(root, "run")
    assert (reports / "01-boom.ipynb").is_file()
    assert not failed.exists()  # a success clears the stale failure
    assert 'class="ok"' in (reports / "index.html").read_text()


def test_snakefile_discovers_new_notebooks(tmp_path):
    """Adding a notebook adds a stage (rule) with no Snakefile edit; order follows NN."""
    root = make_project(tmp_path / "proj", stages=("01-a", "03-c", "02-b"))
    proc = artsim(root, "run", "-n")
    text = proc.stdout + proc.stderr
    for rule in ("stage_01_a", "stage_02_b", "stage_03_c", "report"):
        assert rule in text
    # 03's inputs include 02's executed notebook
    block = text[text.index("rule stage_03_c") :]
    assert "reports/smoke/02-b.ipynb" in block.split("output:")[0]


@pytest.mark.slow
def test_runner_timeout_and_broken_notebook(tmp_path, run_dir):
    from artsim_lib.workflow import runner

    slow = tmp_path / "nb" / "01-slow.ipynb"
    slow.parent.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(30)")]), slow)
    out = tmp_path / "out" / "01-slow.ipynb"
    with pytest.raises(runner.StageError, match="CellTimeoutError.*kept at .*01-slow.failed.ipynb"):
        runner.execute(slow, out, "smoke", timeout=2)
    assert (out.parent / "logs" / "01-slow.failed.ipynb").is_file() and not out.exists()

    broken = tmp_path / "nb" / "02-broken.ipynb"
    broken.write_text("{not json")
    with pytest.raises(runner.StageError, match="no executed notebook was written"):
        runner.execute(broken, tmp_path / "out" / "02-broken.ipynb", "smoke")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["logs"]  # no temp files left


def planned_stages(proc):
    """The stage rules of ``artsim run -n``'s 'Job stats' table (empty: nothing to do)."""
    text = proc.stdout + proc.stderr
    if "Job stats:" not in text:
        assert "Nothing to be done" in text, text[-3000:]
        return set()
    table = text[text.index("Job stats:") :].split("total", 1)[0].splitlines()[3:]
    return {line.split()[0] for line in table if line.strip().startswith("stage_")}


def test_rerun_sets(tmp_path):
    """Which stages a changed param re-runs, asked of Snakemake (dry runs) after a finished run
    of the real notebooks, made by hand: every output present, in stage order, recorded with
    ``--touch`` (nothing executes). The rules follow the data, not the order."""
    root = make_project(tmp_path / "proj", stages=())
    (root / "notebooks").mkdir()
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        shutil.copy(nb, root / "notebooks" / nb.name)
    names = sorted(nb.stem for nb in (root / "notebooks").glob("*.ipynb"))
    assert len(names) == 9
    reports = root / "reports" / "smoke"
    artsim(root, "run", "--", "--touch")  # writes the params files; touches nothing that is missing
    reports.mkdir(parents=True, exist_ok=True)
    t0 = (root / "runs" / "smoke" / "params.resolved.yaml").stat().st_mtime
    for i, name in enumerate([*names, "index"]):
        for suffix in (".ipynb", ".html") if name != "index" else (".html",):
            f = reports / f"{name}{suffix}"
            f.write_text("{}")
            os.utime(f, (t0 + 10 + i, t0 + 10 + i))
    artsim(root, "run", "--", "--touch")  # Snakemake's records of a finished run
    params_before = {f.name: f.read_text() for f in (root / "runs" / "smoke" / "params").iterdir()}

    def rule(number):
        return next(f"stage_{n.replace('-', '_')}" for n in names if n.startswith(number))

    expected = {
        (): set(),
        ("evaluation.n_boot=50",): {"09"},
        ("descriptors.weights.colour=2",): {"06", "09"},
        ("finetune.epochs=3",): {"07", "08", "09"},
        ("siamese.epochs=3",): {"08", "09"},
        ("captioning.max_new_tokens=13",): {"03", "04", "05", "06", "08", "09"},
    }
    for sets, stages in expected.items():
        proc = artsim(root, "run", "-n", *[a for s in sets for a in ("--set", s)])
        assert planned_stages(proc) == {rule(n) for n in stages}, sets

    # 07 waits for 02's manifest only (beside 03-06); the plan wrote nothing into the run dir
    text = artsim(root, "run", "-n", "--forceall").stdout
    block = text[text.index(f"rule {rule('07')}:") :].split("output:")[0]
    assert re.findall(r"reports/smoke/(\S+?)\.ipynb", block) == [names[1]]
    assert {f.name: f.read_text() for f in (root / "runs" / "smoke" / "params").iterdir()} == params_before


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")), ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(notebook, caplog):
    """``papermill --help-notebook`` (papermill.inspect_notebook, which the workflow uses to find
    shardable stages) lists every name the parameters cell assigns, each with its type, and
    warns about nothing (a second '=' on a line, in a comment too, hides the parameter)."""
    import ast

    import papermill

    from artsim_lib.workflow import cluster

    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = [
        node.target.id if isinstance(node, ast.AnnAssign) else node.targets[0].id
        for node in ast.parse(cell.source).body
    ]
    with caplog.at_level("WARNING"):
        found = papermill.inspect_notebook(str(notebook))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert list(found) == assigned and {"profile", "overrides"} <= set(found)
    assert all(p["inferred_type_name"] not in ("None", "") for p in found.values()), found
    assert cluster.parameter_names(notebook) == set(assigned)


def test_outputs_and_records_show_paths_relative_to_the_project(tmp_path, monkeypatch):
    from artsim_lib.io import provenance
    from artsim_lib.workflow import runner

    root = tmp_path / "proj"
    monkeypatch.setenv("ARTSIM_ROOT", str(root))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"run directory {root}/runs/smoke, root `{root}`\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": f"'{root}2/x'", "image/png": "AAAA"}),
    ]
    assert runner.relative_outputs(nb, root) == 1
    assert nb.cells[0].outputs[0]["text"] == "run directory runs/smoke, root `.`\n"
    assert nb.cells[0].outputs[1]["data"]["text/plain"] == f"'{root}2/x'"  # another folder
    assert provenance.shown(root / "runs" / "x") == "runs/x" and provenance.shown(5) == 5
    assert provenance.shown("/elsewhere/y") == "/elsewhere/y"
