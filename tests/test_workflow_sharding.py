"""Sharded stages in the workflow: shardable notebooks are found by their parameters, fan out
into shard jobs and one merge job, give the artifacts of an unsharded run, and a rerun after a
failed shard runs only that shard (and what follows). The toy study of sharded notebooks is built
by tests/helpers.py; test_slurm.py runs the same study through a real SLURM."""

import shutil

import pytest

from artsim_lib import config
from artsim_lib.workflow import cluster, dataflow
from helpers import (
    SHARD_PARAMETERS,
    artifact_hashes,
    artsim,
    job_counts,
    make_study,
    output,
    shard_sets,
    write_notebook,
    write_toy_notebooks,
)


@pytest.fixture
def toy_study(tmp_path):
    """A throwaway project with the toy study (03 and 05, sharded)."""
    return make_study(tmp_path / "proj", write_toy_notebooks(tmp_path / "toy-notebooks"))


# -- shardable notebooks -------------------------------------------------------------------
def test_shardable_notebooks_found_by_their_parameters(tmp_path):
    plain = write_notebook(tmp_path / "01-a.ipynb", "01-a", parameters="batch = 4  # x\n")
    sharded = write_notebook(tmp_path / "03-c.ipynb", "03-c", parameters=SHARD_PARAMETERS)
    mention = write_notebook(tmp_path / "04-d.ipynb", "04-d", "num_shards = 3")  # not a parameter
    assert cluster.parameter_names(plain) == {"profile", "overrides", "batch"}
    assert [cluster.is_shardable(nb) for nb in (plain, sharded, mention)] == [False, True, False]
    plan, warnings = cluster.shard_plan([plain, sharded, mention], {"01": 2, "03": 3, "04": 1, "09": 2})
    assert plan == {"03-c": 3}
    assert any("01-a.ipynb has no num_shards" in w for w in warnings)
    assert any("no stage 09" in w for w in warnings) and not any("04" in w for w in warnings)


def test_shards_param_validation():
    P = config.load_params("smoke", ["workflow.shards.05=3"])
    assert P.workflow.shards == {"05": 3}
    assert config.validate({"workflow": {"shards": {3: 2}}}).workflow.shards == {"03": 2}  # YAML's 03
    for bad, message in (({"3": 2}, "two-digit"), ({"05": 0}, "at least 1")):
        with pytest.raises(config.ParamsError, match=message):
            config.validate({"workflow": {"shards": bad}})


def test_stage_params_leave_out_the_workflow_section():
    one = config.load_params("smoke")
    two = config.load_params("smoke", ["workflow.shards.03=4", "workflow.job_dtype.03=float16"])
    for number in ("03", "09", "42"):  # a stage the table does not know: all but workflow
        assert dataflow.stage_params(one, number) == dataflow.stage_params(two, number)
        assert dataflow.stage_params(config.load_params("smoke", ["seed=9"]), number) != dataflow.stage_params(
            one, number
        )
    assert one.to_yaml() != two.to_yaml()


def test_fan_out_and_merge_plan(toy_study):
    write_notebook(toy_study / "notebooks" / "01-eda.ipynb", "01-eda")  # a light stage
    text = output(artsim(toy_study, "run", "-n", *shard_sets({"03": 3, "05": 2}), "--", "--printshellcmds"))
    assert job_counts(text) == {
        "stage_01_eda": 1,
        "stage_03_captioning_shard": 3,
        "stage_03_captioning_merge": 1,
        "stage_05_generation_shard": 2,
        "stage_05_generation_merge": 1,
        "report": 1,
        "all": 1,
    }
    for k in range(3):
        assert f"reports/smoke/shards/03-captioning.{k}-of-3.ipynb" in text
        assert f"-p num_shards 3 -p shard_index {k} " in text
    merge = text[text.index("rule stage_03_captioning_merge:") :].split("Shell command")[1]
    assert "-p shard_index -1" in merge.splitlines()[0]
    block = text[text.index("rule stage_05_generation_shard:") :].split("output:")[0]
    assert "reports/smoke/03-captioning.ipynb" in block  # the shards wait for 03's merge

    # one shard: the usual single job, no shard or merge rules
    text = output(artsim(toy_study, "run", "-n"))
    assert set(job_counts(text)) == {"stage_01_eda", "stage_03_captioning", "stage_05_generation", "report", "all"}


def test_until_a_sharded_stage_targets_its_merge(toy_study):
    text = output(artsim(toy_study, "run", "-n", "--until", "03", *shard_sets({"03": 2})))
    assert set(job_counts(text)) == {"stage_03_captioning_shard", "stage_03_captioning_merge"}


def test_dag_written_as_dot(toy_study, tmp_path):
    out = tmp_path / "graph" / "dag.dot"
    out.parent.mkdir()
    proc = artsim(toy_study, "run", "--dag", str(out), *shard_sets({"03": 2}))
    dot = out.read_text()
    assert dot.lstrip().startswith("digraph") and "stage_03_captioning_shard" in dot
    assert str(out) in proc.stderr
    assert not (toy_study / "reports").exists()  # nothing ran
    with pytest.raises(config.ParamsError, match="--dag dag.txt"):
        cluster.dag_format("dag.txt")


def test_dag_picture_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    path, message = cluster.write_dag("digraph { a -> b }", tmp_path / "dag.png")
    assert path == tmp_path / "dag.dot" and path.read_text() == "digraph { a -> b }"
    assert not (tmp_path / "dag.png").exists()
    assert f"dot -Tpng {path} -o {tmp_path / 'dag.png'}" in message


# -- running it ----------------------------------------------------------------------------
@pytest.mark.slow
def test_sharded_run_fails_on_a_shard_reruns_only_it_and_equals_unsharded(toy_study, tmp_path):
    root, reports = toy_study, toy_study / "reports" / "smoke"
    artsim(root, "run", "--cores", "2")  # the reference: one job per stage
    reference = artifact_hashes(root / "runs" / "smoke")
    assert set(reference) == {"toy/03-captioning.parquet", "toy/05-generation.parquet"}
    shutil.rmtree(root / "runs")
    shutil.rmtree(root / "reports")

    sets = shard_sets({"03": 2, "05": 2})
    (root / "fail-03.1").touch()
    proc = artsim(root, "run", "--cores", "2", *sets, check=False)
    assert proc.returncode != 0
    log = reports / "logs" / "03-captioning.1-of-2.log"
    failed = reports / "logs" / "03-captioning.1-of-2" / "03-captioning.failed.ipynb"
    assert "shard 1 of 03 fails on purpose" in log.read_text()
    assert "shard 1 of 03 fails on purpose" in failed.read_text()
    assert str(log.relative_to(root)) in proc.stdout + proc.stderr
    assert (reports / "shards" / "03-captioning.0-of-2.ipynb").is_file()  # the other shard finished
    assert not (reports / "03-captioning.ipynb").exists()
    kept = reports / "shards" / "03-captioning.0-of-2.ipynb"
    before = kept.stat().st_mtime_ns

    (root / "fail-03.1").unlink()
    proc = artsim(root, "run", "--cores", "2", *sets)
    ran = {
        line.split()[1].rstrip(":") for line in output(proc).splitlines() if line.startswith(("rule ", "localrule "))
    }
    assert ran == {
        "stage_03_captioning_shard",
        "stage_03_captioning_merge",
        "stage_05_generation_shard",
        "stage_05_generation_merge",
        "report",
        "all",
    }
    assert kept.stat().st_mtime_ns == before  # shard 0 did not run again
    assert not failed.parent.exists()  # the success cleared the failure
    assert artifact_hashes(root / "runs" / "smoke") == reference

    # the shard count is scheduling only: changing it re-runs the sharded stages, nothing else
    text = output(artsim(root, "run", "-n", *shard_sets({"03": 2, "05": 3})))
    assert set(job_counts(text)) == {"stage_05_generation_shard", "stage_05_generation_merge", "report", "all"}
