"""The index page of a run: reports/<profile>/index.html, one self-contained file.

It lists every stage (links, wall time, status, key figure), the provenance and the
resolved params. Stages that have not run are shown as such.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Sequence

from . import config, paths, runner

SMOKE_BANNER = ("data are synthetic and models tiny and untrained: "
                "the numbers test the pipeline, not the science")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:72rem;padding:0 1rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.banner{background:#fff4ce;border:1px solid #e0c060;padding:.6rem 1rem;border-radius:4px;
font-weight:600}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.3rem .6rem;
text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.failed{color:#c62828;font-weight:600}.stale{color:#9a6700}
.not-run{color:#888}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.8rem;overflow:auto;font-size:.85rem}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:22rem;max-height:18rem;border:1px solid #ddd}
figcaption{font-size:.85rem;color:#555}
"""


@dataclass
class StageInfo:
    """What the index shows about one stage."""

    name: str
    status: str = "not run"
    links: dict[str, str] = field(default_factory=dict)  # label -> path relative to the index
    wall_s: float | None = None
    notebook_s: float | None = None
    summary: dict = field(default_factory=dict)
    figure: str | None = None  # base64 PNG


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def first_png(ipynb: Path) -> str | None:
    """The first ``image/png`` output of an executed notebook (base64), or None."""
    nb = _read_json(ipynb)
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png:
                return ("".join(png) if isinstance(png, list) else png).replace("\n", "")
    return None


def first_error(ipynb: Path) -> str | None:
    """``ename: evalue`` of the first error output of a notebook, or None."""
    for cell in _read_json(ipynb).get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"
    return None


def _notebook_wall(ipynb: Path) -> float | None:
    meta = _read_json(ipynb).get("metadata", {})
    wall = meta.get("artsim", {}).get("wall_s") or meta.get("papermill", {}).get("duration")
    return float(wall) if wall is not None else None


def stage_info(name: str, source: Path | None, rdir: Path, P: config.Params) -> StageInfo:
    """Status, links, timings and key figure of one stage from what is on disk."""
    info = StageInfo(name)
    done, failed = rdir / f"{name}.ipynb", runner.failed_notebook(rdir / "logs", name)
    record = _read_json(P.run.stages_dir / f"{name}.json")
    if failed.exists() and (not done.exists() or failed.stat().st_mtime >= done.stat().st_mtime):
        info.status = "failed"
        info.links = {"failed notebook": f"logs/{failed.name}"}
        if failed.with_suffix(".html").exists():
            info.links["failed HTML"] = f"logs/{failed.with_suffix('.html').name}"
        error = first_error(failed)
        info.summary = {"error": error} if error else {}
        return info
    if not done.exists():
        return info
    info.status = "ok"
    if source is not None and source.exists() and source.stat().st_mtime > done.stat().st_mtime:
        info.status = "stale"  # the notebook was edited after this run
    if (rdir / f"{name}.html").exists():
        info.links["HTML"] = f"{name}.html"
    info.links["notebook"] = done.name
    info.wall_s, info.summary = record.get("wall_s"), record.get("summary") or {}
    info.notebook_s = _notebook_wall(done)
    info.figure = first_png(done)
    return info


def collect_stages(P: config.Params, notebooks: Sequence[Path] | None = None) -> list[StageInfo]:
    """Every stage: the notebooks found now, plus any executed ones left in the reports dir."""
    rdir = runner.reports_dir(P.profile)
    found = runner.discover_notebooks() if notebooks is None else notebooks
    sources: dict[str, Path | None] = {nb.stem: nb for nb in found}
    for done in runner.discover_notebooks(rdir) if rdir.is_dir() else []:
        sources.setdefault(done.stem, None)
    names = sorted(sources, key=lambda s: (s.split("-", 1)[0], s))
    return [stage_info(name, sources[name], rdir, P) for name in names]


# -- HTML pieces -----------------------------------------------------------------
def _fmt_s(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _summary(summary: dict, limit: int = 6) -> str:
    items = [f"{k}={v}" for k, v in list(summary.items())[:limit]]
    return escape(", ".join(items) + (" ..." if len(summary) > limit else ""))


def stages_table(stages: list[StageInfo]) -> str:
    rows = []
    for s in stages:
        links = " · ".join(f'<a href="{escape(href)}">{escape(label)}</a>'
                           for label, href in s.links.items()) or "—"
        css = s.status.replace(" ", "-")
        rows.append(f"<tr><td>{escape(s.name)}</td><td>{links}</td>"
                    f'<td class="num">{_fmt_s(s.wall_s)}</td>'
                    f'<td class="num">{_fmt_s(s.notebook_s)}</td>'
                    f'<td class="{css}">{escape(s.status)}</td><td>{_summary(s.summary)}</td></tr>')
    head = ("<tr><th>stage</th><th>outputs</th><th>stage wall (s)</th><th>notebook wall (s)</th>"
            "<th>status</th><th>summary</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def figures(stages: list[StageInfo]) -> str:
    figs = [f'<figure><img alt="key figure of {escape(s.name)}" '
            f'src="data:image/png;base64,{s.figure}">'
            f'<figcaption>{escape(s.name)}</figcaption></figure>'
            for s in stages if s.figure]
    return "".join(figs) or "<p>No figures yet.</p>"


def provenance_html(prov: dict) -> str:
    if not prov:
        return "<p>No provenance recorded yet (no stage has started).</p>"
    keys = ("profile", "seed", "git_commit", "updated", "run_dir", "platform", "hostname")
    rows = "".join(f"<tr><th>{k}</th><td>{escape(str(prov[k]))}</td></tr>"
                   for k in keys if k in prov)
    pkgs = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>"
                   for k, v in (prov.get("packages") or {}).items())
    return (f"<table>{rows}</table><h3>Package versions</h3>"
            f"<table><tr><th>package</th><th>version</th></tr>{pkgs}</table>")


def is_synthetic(P: config.Params) -> bool:
    """Synthetic data or tiny untrained models: the run tests the pipeline only."""
    return P.profile == "smoke" or P.data.source == "synthart" or P.models.build_tiny


def render(P: config.Params, stages: list[StageInfo], prov: dict, params_text: str) -> str:
    """The whole index page as one string."""
    title = f"artsim — {P.profile}"
    banner = f'<p class="banner">{escape(SMOKE_BANNER)}</p>' if is_synthetic(P) else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
<p>How similar are AI-generated derivatives of paintings to their originals?</p>
{banner}
<h2 id="stages">Stages</h2>
{stages_table(stages)}
<h2 id="figures">Key figures</h2>
{figures(stages)}
<h2 id="provenance">Provenance</h2>
{provenance_html(prov)}
<h2 id="params">Resolved params</h2>
<pre>{escape(params_text)}</pre>
</body></html>
"""


def build_index(profile_or_params: str | os.PathLike | config.Params,
                overrides: Sequence[str] = (), notebooks: Sequence[Path] | None = None) -> Path:
    """Write ``reports/<profile>/index.html`` (atomically) and return its path."""
    P = (profile_or_params if isinstance(profile_or_params, config.Params)
         else config.load_params(profile_or_params, overrides))
    params_file = P.run.params_file
    params_text = (params_file.read_text(encoding="utf-8") if params_file.exists()
                   else f"# {params_file} not written yet; resolved now:\n{P.to_yaml()}")
    page = render(P, collect_stages(P, notebooks), _read_json(P.run.provenance_file), params_text)
    return paths.atomic_write_text(runner.reports_dir(P.profile) / "index.html", page)
