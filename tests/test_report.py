"""The index page and the HTML export: sections, working links, nothing loaded from the
network. Executed notebooks are made by hand here (no papermill), so these tests are fast."""

import json
import re

import pytest

from artsim_lib import config
from artsim_lib.workflow import report, runner
from helpers import PNG_B64, executed_notebook, make_project


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A project with stages 01 (ok, with a figure), 02 (failed) and 03 (not run)."""
    root = make_project(tmp_path / "proj", stages=("01-a", "02-b", "03-c"))
    monkeypatch.setenv("ARTSIM_ROOT", str(root))
    monkeypatch.delenv("ARTSIM_RUN_DIR", raising=False)
    monkeypatch.delenv("ARTSIM_NOTEBOOKS_DIR", raising=False)
    P = config.load_params("smoke", ["seed=99"])
    rdir = runner.reports_dir("smoke")
    nb = executed_notebook(rdir / "01-a.ipynb")
    runner.export_html(nb, rdir / "01-a.html")
    failed = executed_notebook(runner.failed_notebook(rdir / "logs", "02-b"), with_png=False)
    runner.export_html(failed, failed.with_suffix(".html"))
    stages = P.run.stages_dir
    stages.mkdir(parents=True)
    (stages / "01-a.json").write_text(json.dumps({"stage": "01-a", "wall_s": 3.5, "summary": {"n_images": 100}}))
    P.run.params_file.write_text(P.to_yaml())
    P.run.provenance_file.write_text(
        json.dumps(
            {
                "profile": "smoke",
                "seed": 99,
                "git_commit": "abc123-dirty",
                "packages": {"python": "3.11", "papermill": "2.7.0"},
            }
        )
    )
    return P


def test_index_sections(run):
    index = report.build_index(run)
    assert index == runner.reports_dir("smoke") / "index.html"
    html = index.read_text()
    for section in ('id="stages"', 'id="figures"', 'id="provenance"', 'id="params"'):
        assert section in html
    assert report.SMOKE_BANNER in html
    assert "abc123-dirty" in html and "papermill" in html and "2.7.0" in html
    assert "seed: 99" in html  # the resolved params file, verbatim
    assert "3.50" in html and "1.25" in html and "n_images=100" in html
    assert f"data:image/png;base64,{PNG_B64}" in html  # the key figure, inlined


def test_stage_status(run):
    by_name = {s.name: s for s in report.collect_stages(run)}
    assert [by_name[n].status for n in ("01-a", "02-b", "03-c")] == ["ok", "failed", "not run"]
    assert by_name["03-c"].links == {}
    assert by_name["02-b"].summary == {"error": "KeyError: 'style'"}
    html = report.build_index(run).read_text()
    assert re.search(r"<td>03-c</td><td>—</td>.*?not run", html)


def test_links_resolve_and_nothing_external(run):
    index = report.build_index(run)
    html = index.read_text()
    hrefs = re.findall(r'href="([^"]+)"', html)
    expected = {"01-a.html", "01-a.ipynb", "logs/02-b.failed.ipynb", "logs/02-b.failed.html"}
    assert expected <= set(hrefs)
    for href in hrefs:
        assert (index.parent / href).is_file(), href
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html


def test_stage_html_is_offline(run):
    html = (runner.reports_dir("smoke") / "01-a.html").read_text()
    assert 'src="http' not in html and "<script src=" not in html
    assert 'import("http' not in html
    assert "data:image/png;base64," in html  # images embedded


def test_missing_everything_is_not_a_crash(tmp_path, monkeypatch):
    root = make_project(tmp_path / "empty", stages=("01-a",))
    monkeypatch.setenv("ARTSIM_ROOT", str(root))
    monkeypatch.delenv("ARTSIM_RUN_DIR", raising=False)
    html = report.build_index("smoke").read_text()
    assert "not run" in html and "No provenance recorded" in html and "not written yet" in html


def test_full_profile_has_no_banner(run):
    P = config.load_params("smoke", ["profile=full", "data.source=kaggle", "models.build_tiny=false"])
    assert not report.is_synthetic(P)
    assert report.SMOKE_BANNER not in report.render(P, [], {}, "")


def test_strip_external():
    page = (
        '<script src="https://cdn/require.js"></script><script src=""></script>'
        '<script>var x = 1;</script><link rel="stylesheet" href="http://x/y.css">'
        '<script type="module">await import("https://cdn/mermaid.mjs")</script>'
    )
    assert runner.strip_external(page) == "<script>var x = 1;</script>"
