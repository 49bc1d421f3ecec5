"""The ``artsim`` command line: params errors, ``artsim params``, dry runs, one stage."""

import json
import sys

import pytest
import yaml

from artsim_lib import cli
from helpers import artsim, make_project, write_notebook


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throwaway project (ARTSIM_ROOT) with two tiny notebooks."""
    root = make_project(tmp_path / "proj")
    monkeypatch.setenv("ARTSIM_ROOT", str(root))
    monkeypatch.delenv("ARTSIM_RUN_DIR", raising=False)
    monkeypatch.delenv("ARTSIM_NOTEBOOKS_DIR", raising=False)
    return root


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_params_prints_resolved_yaml(project, capsys):
    assert cli.main(["params", "--profile", "smoke", "--set", "preprocess.size=96", "--set", "seed=7"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["profile"] == "smoke"
    assert data["preprocess"]["size"] == 96 and data["seed"] == 7


def test_params_output_file_written_only_if_changed(project, tmp_path):
    out = tmp_path / "p.yaml"
    assert cli.main(["params", "--profile", "smoke", "-o", str(out)]) == 0
    first = out.stat().st_mtime_ns
    assert cli.main(["params", "--profile", "smoke", "-o", str(out)]) == 0
    assert out.stat().st_mtime_ns == first


@pytest.mark.parametrize("command", ["run", "params", "report", "stage"])
def test_unknown_key_exits_2_with_one_line(project, capsys, command):
    args = [command, "--profile", "smoke", "--set", "preprocess.sise=96"]
    if command == "stage":
        args.insert(1, str(project / "notebooks" / "01-a.ipynb"))
    assert cli.main(args) == 2
    err = _one_line_error(capsys)
    assert "preprocess.sise" in err and "unknown key" in err
    assert str(project / "params" / "smoke.yaml") in err
    assert not (project / "runs").exists() and not (project / "reports").exists()


def test_bad_file_names_file_and_key(project, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: bad\npreprocess:\n  size: big\n")
    assert cli.main(["run", "--profile", str(bad)]) == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and "preprocess.size" in err


def test_unknown_profile_and_stage(project, capsys):
    assert cli.main(["params", "--profile", "nosuch"]) == 2
    assert "nosuch" in _one_line_error(capsys)
    assert cli.main(["run", "--until", "07", "-n"]) == 2
    assert "--until 07" in _one_line_error(capsys)


def test_exit_code_and_stderr_from_the_console(project):
    """The real process: status 2, one line on stderr, no traceback."""
    proc = artsim(project, "params", "--set", "nosuch=1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "nosuch: unknown key" in proc.stderr


def test_dry_run_lists_jobs_and_creates_no_reports(project):
    proc = artsim(project, "run", "--profile", "smoke", "-n", "--set", "preprocess.size=64")
    text = proc.stdout + proc.stderr
    for job in ("stage_01_a", "stage_02_b", "report"):
        assert job in text
    assert "dry-run" in text
    assert not (project / "reports").exists()


def test_until_targets_one_stage(project):
    proc = artsim(project, "run", "-n", "--until", "01")
    text = proc.stdout + proc.stderr
    assert "stage_01_a" in text and "stage_02_b" not in text


def test_snakemake_command_line(project):
    parser = cli.build_parser()[0]
    args = parser.parse_args(["run", "--set", "seed=3", "--cores", "2", "--forceall"])
    args.snakemake_args = ["--keep-going"]
    P = cli.config.load_params("smoke", ["seed=3"])
    cmd = cli.snakemake_command(args, P)
    assert cmd[:3] == [sys.executable, "-m", "snakemake"]
    assert "--forceall" in cmd and "--keep-going" in cmd
    assert cmd[cmd.index("--rerun-triggers") + 1 :][:4] == list(cli.RERUN_TRIGGERS)
    config = cmd[cmd.index("--config") + 1 :]  # --config takes the rest of the line
    assert "profile=smoke" in config and f"overrides={json.dumps(['seed=3'])}" in config
    assert f"params_file={P.run.params_file}" in config


def test_passthrough_only_for_run(project, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["params", "--", "--keep-going"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_stage_injects_parameters(project):
    nb = write_notebook(
        project / "notebooks" / "03-shard.ipynb",
        "03-shard",
        "print(f'SHARD={shard_index}/{num_shards} SIZE={P.preprocess.size}')",
        parameters="num_shards = 1\nshard_index = 0\n",
    )
    proc = artsim(
        project, "stage", str(nb), "--set", "preprocess.size=80", "-p", "num_shards", "4", "-p", "shard_index", "2"
    )
    assert "03-shard: ok" in proc.stdout
    out = project / "reports" / "smoke" / "03-shard.ipynb"
    assert "SHARD=2/4 SIZE=80" in out.read_text()
    meta = json.loads(out.read_text())["metadata"]
    assert meta["artsim"]["wall_s"] > 0 and meta["papermill"]["output_path"] == str(out)
    assert (project / "runs" / "smoke" / "stages" / "03-shard.json").is_file()


def test_compare_is_an_artsim_subcommand(tmp_path, capsys):
    from PIL import Image

    from artsim_lib import cli

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(a)
    Image.new("RGB", (48, 48), (30, 30, 200)).save(b)
    assert cli.main(["compare", str(a), str(a)]) == 0
    same = capsys.readouterr().out
    assert cli.main(["compare", str(a), str(b)]) == 0
    differ = capsys.readouterr().out

    def value(out):
        return float(next(line.split()[-1] for line in out.splitlines() if line.startswith("[0,1]")))

    assert value(same) == pytest.approx(1.0) and value(differ) < value(same)
    assert cli.main(["compare", str(a), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_each_run_directory_has_its_own_reports(project):
    """reports/<run name>/: one per run directory, never shared by the run dirs of a profile."""
    from artsim_lib.workflow import runner

    for args, name in ((["--set", "run_dir=runs/other"], "other"), (["--pilot", "8"], "smoke-pilot8"), ([], "smoke")):
        text = artsim(project, "run", "-n", "--until", "02", *args).stdout
        assert f"reports/{name}/02-b.ipynb" in text and "params/02-b.yaml" in text, args
    P = cli.config.load_params("smoke", ["run_dir=runs/other"])
    assert runner.reports_dir(P) == project / "reports" / "other" == runner.reports_dir(P.run_path)
    assert not (project / "reports").exists() and not (project / "runs").exists()  # plans only
