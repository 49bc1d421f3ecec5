"""The study's front page built from a run made by hand: every section, the headline table from the
file stage 09 writes, the key figures, working links, provenance, and the smoke banner only on smoke."""

import base64
import json
import re
import shutil

import nbformat
import pandas as pd
import pytest
import yaml

from artsim_lib import config
from artsim_lib.stages import s09_evaluation as evaluation
from artsim_lib.workflow import report, runner
from helpers import PNG_B64, Table, executed_notebook, hand_study, make_project, tiny_png

STAGES = ("01-eda", "06-descriptors", "09-evaluation")
KEY_PNG = base64.b64encode(tiny_png() + b"\0").decode()  # a different image than the first one


def add_key_figure(ipynb):
    """A second figure, in a cell tagged key-figure: the one the index should show."""
    nb = nbformat.read(ipynb, as_version=4)
    cell = nbformat.v4.new_code_cell("forest()", metadata={"tags": ["key-figure"]})
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": KEY_PNG})]
    nb.cells.append(cell)
    nbformat.write(nb, ipynb)


def make_run(root, profile, with_evaluation=True):
    """Executed notebooks (+ HTML) of 01 and 09, stage records, provenance, params and metrics.json."""
    P = config.load_params(profile)
    rdir = runner.reports_dir(P.profile)
    for stage in ("01-eda", "09-evaluation"):
        nb = executed_notebook(rdir / f"{stage}.ipynb")
        if stage == "09-evaluation":
            add_key_figure(nb)
        runner.export_html(nb, rdir / f"{stage}.html")
    P.run.stages_dir.mkdir(parents=True, exist_ok=True)
    for stage, wall in (("01-eda", 3.5), ("09-evaluation", 12.25)):
        (P.run.stages_dir / f"{stage}.json").write_text(
            json.dumps({"stage": stage, "wall_s": wall, "summary": {"measures": 2}})
        )
    P.run.params_file.write_text(P.to_yaml())
    P.run.provenance_file.write_text(
        json.dumps(
            {
                "profile": P.profile,
                "seed": P.seed,
                "git_commit": "f00d-dirty",
                "packages": {"python": "3.11", "torch": "2.13.0"},
            }
        )
    )
    if with_evaluation:
        es, table = hand_study()
        cfg = P.evaluation.model_copy(update={"measures": ["descriptor", "clip_siamese"], "n_boot": 20})
        r = evaluation.evaluate_set(
            es,
            {"descriptor": Table(default=0.5, name="d"), "clip_siamese": Table(table)},
            cfg,
            P.seed,
            skipped=pd.DataFrame({"measure": ["resnet_regression"], "reason": ["no model directory"]}),
        )
        evaluation.write_outputs(r, P)
    return P


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "proj", stages=STAGES)
    paper = yaml.safe_load((root / "params" / "smoke.yaml").read_text())
    paper.update(profile="paper", data={"source": "kaggle", "root": "data/wikiart"})
    paper["models"]["build_tiny"] = False
    (root / "params" / "paper.yaml").write_text(yaml.safe_dump(paper))
    monkeypatch.setenv("ARTSIM_ROOT", str(root))
    monkeypatch.delenv("ARTSIM_RUN_DIR", raising=False)
    monkeypatch.delenv("ARTSIM_NOTEBOOKS_DIR", raising=False)
    return root


def section(html, name):
    """The HTML between ``<h2 id="name">`` and the next h2."""
    m = re.search(rf'<h2 id="{name}">(.*?)(?=<h2 |</body>)', html, re.S)
    assert m, f"no section {name}"
    return m.group(1)


def test_every_section_of_the_front_page(project):
    P = make_run(project, "smoke")
    html = report.build_index(P).read_text()
    done = section(html, "stages")
    for stage in STAGES:
        assert f"<td>{stage}</td>" in done and report.describe(stage) in done
    assert re.search(r"<td>06-descriptors</td><td>—</td>.*?not run", done)  # a stage that did not run
    results = section(html, "results")
    assert "<td>clip_siamese</td>" in results and "<td>descriptor</td>" in results
    assert ">reference<" in results and 'class="chance"' in results  # the reference is marked, chance shown
    assert "resnet_regression" in results and "no model directory" in results  # skipped, with the reason
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", results)  # value [interval]
    figures = section(html, "figures")
    assert f"data:image/png;base64,{KEY_PNG}" in figures  # 09's key-figure cell, not its first image
    assert f"data:image/png;base64,{PNG_B64}" in figures  # 01 has no tag: its first image
    prov = section(html, "provenance")
    assert "f00d-dirty" in prov and "torch" in prov and "2.13.0" in prov and f"<td>{P.seed}</td>" in prov
    assert "3.50" in prov and "12.2" in prov  # wall time per stage
    assert f"seed: {P.seed}" in section(html, "params")


def test_headline_table_is_the_one_stage_09_wrote(project):
    P = make_run(project, "smoke")
    doc = json.loads((P.run.root / "evaluation" / "metrics.json").read_text())
    results = section(report.build_index(P).read_text(), "results")
    row = next(r for r in doc["headline"]["rows"] if r["measure"] == "clip_siamese")
    for column in doc["headline"]["columns"]:
        assert f"<th>{column.replace('>', '&gt;')}</th>" in results
    for text in row["text"].values():
        assert text in results


def test_smoke_banner_on_smoke_only(project):
    smoke = report.build_index(make_run(project, "smoke")).read_text()
    assert report.SMOKE_BANNER in smoke
    assert smoke.index(report.SMOKE_BANNER) < smoke.index('<h2 id="stages">')  # at the top
    paper = make_run(project, "paper")
    assert not report.is_synthetic(paper)
    assert report.SMOKE_BANNER not in report.build_index(paper).read_text()


def test_links_exist_and_nothing_is_loaded_from_the_network(project):
    index = report.build_index(make_run(project, "smoke"))
    html = index.read_text()
    targets = re.findall(r'(?:href|src)\s*=\s*"([^"]*)"', html)
    local = [t for t in targets if not t.startswith("data:")]
    assert {"09-evaluation.html", "09-evaluation.ipynb", "01-eda.html", "01-eda.ipynb"} <= set(local)
    for target in local:
        assert not re.match(r"[a-z]+:|//", target), target  # relative paths only
        assert (index.parent / target).is_file(), target
    assert not re.search(r"https?://", html) and "<script" not in html and "<link" not in html


def test_without_evaluation_the_page_says_so(project):
    P = make_run(project, "smoke", with_evaluation=False)
    shutil.rmtree(P.run.root / "evaluation", ignore_errors=True)
    results = section(report.build_index(P).read_text(), "results")
    assert "has not run yet" in results and "<table" not in results


def test_bold_only_where_a_paired_difference_excludes_0_and_never_for_mse():
    cell = {"value": 0.1, "lo": 0.0, "hi": 0.2, "n": 5, "note": ""}
    rows = [
        {
            "measure": m,
            "description": "",
            "text": {"MSE": t, "R@1": t, "acc random": t},
            "cells": {"MSE": cell, "R@1": cell, "acc random": cell},
        }
        for m, t in (("a", "0.100"), ("b", "0.900"))
    ]
    doc = {
        "headline": {
            "columns": ["MSE", "R@1", "acc random"],
            "rows": rows,
            "chance": {},
            "best": {"MSE": ["a"], "R@1": ["b"], "acc random": []},
        },
        "test_set": {},
        "params": {},
    }
    html = report.headline_html(doc)
    assert html.count('class="num best"') == 1  # R@1 for b only: not MSE, not the tied column
    assert re.search(r"<td>b</td><td></td><td class=\"num\">0.900</td><td class=\"num best\">0.900", html)
