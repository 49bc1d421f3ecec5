"""The study's front page: reports/<run name>/index.html, one self-contained file that opens offline.

From top to bottom: on synthetic or tiny-model runs a banner saying the numbers test the pipeline,
not the science; what was done (one line per stage, its status and links to the executed notebook's
HTML and .ipynb); the headline table of stage 09 (from ``evaluation/metrics.json``); the key figure
of each stage (the image of a cell tagged ``key-figure``, else the notebook's first image); the
provenance (profile, seed, commit, package versions, wall time per stage) and the resolved params.
Stages that have not run are shown as such.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from artsim_lib import config
from artsim_lib.io import paths
from artsim_lib.workflow import runner

SMOKE_BANNER = "data are synthetic and models are tiny and untrained, so the numbers test the pipeline, not the science"
STAGE_DESCRIPTIONS = {  # stage number -> what it does, in one line
    "01": "Exploratory analysis of the raw collection: styles, artists, sizes, colour modes, defects.",
    "02": "Preprocessing: missing labels and phash duplicates dropped, EXIF, RGB, square resize, stratified split.",
    "03": "Captions of every original with BLIP-2 (sharded, resumable).",
    "04": "A moderate and a radical prompt per original from its caption, within CLIP's 77 tokens.",
    "05": "Derivatives: SDXL-Refiner img2img at two strengths (or graded augmentations); triplets per split.",
    "06": "Handcrafted descriptors (colour, texture, edges, shape, SSIM) and the weighted descriptor similarity.",
    "07": "ResNet-50 fine-tuned to classify style; the best epoch kept by validation loss.",
    "08": "Siamese networks on frozen CLIP and on the fine-tuned ResNet-50, trained on the triplets.",
    "09": "Evaluation of every measure on the held-out test split, with bootstrap confidence intervals.",
}
HEADLINE_LOWER_IS_BETTER = {"MSE", "MAE", "median rank", "Spearman strength"}
NEVER_BEST = {"MSE", "MAE", "MSE affine"}  # circular against the descriptor reference: never bolded

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
table.headline td{font-size:.8rem;white-space:nowrap}td.best{font-weight:700;background:#eef7ee}
tr.chance td{color:#666;font-style:italic}.note{color:#555;font-size:.9rem}
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


def first_png(ipynb: Path, tag: str | None = None) -> str | None:
    """The first ``image/png`` output of an executed notebook (base64), or None; with ``tag``,
    only outputs of cells carrying that tag count."""
    nb = _read_json(ipynb)
    for cell in nb.get("cells", []):
        if tag is not None and tag not in cell.get("metadata", {}).get("tags", []):
            continue
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png:
                return ("".join(png) if isinstance(png, list) else png).replace("\n", "")
    return None


def key_png(ipynb: Path) -> str | None:
    """A stage's key figure: the image of a cell tagged ``key-figure``, else the first image."""
    return first_png(ipynb, "key-figure") or first_png(ipynb)


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
    info.figure = key_png(done)
    return info


def collect_stages(P: config.Params, notebooks: Sequence[Path] | None = None) -> list[StageInfo]:
    """Every stage: the notebooks found now, plus any executed ones left in the reports dir."""
    rdir = runner.reports_dir(P)
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


def describe(stage: str) -> str:
    """The one-line description of a stage (``09-evaluation`` -> its line), or ''."""
    return STAGE_DESCRIPTIONS.get(stage.split("-", 1)[0], "")


def stages_table(stages: list[StageInfo]) -> str:
    """What was done: one row per stage with its outputs, description, status and summary."""
    rows = []
    for s in stages:
        links = " · ".join(f'<a href="{escape(href)}">{escape(label)}</a>' for label, href in s.links.items()) or "—"
        css = s.status.replace(" ", "-")
        rows.append(
            f"<tr><td>{escape(s.name)}</td><td>{links}</td><td>{escape(describe(s.name))}</td>"
            f'<td class="{css}">{escape(s.status)}</td><td>{_summary(s.summary)}</td></tr>'
        )
    head = "<tr><th>stage</th><th>outputs</th><th>what it does</th><th>status</th><th>summary</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _best(head: dict, column: str) -> set[str]:
    """The measure stage 09 called best in ``column``: only where its paired difference to every
    other measure on the same test originals excludes 0 (``headline.best``), never a point-estimate
    winner and never by MSE/MAE, which measure the [0, 1] mapping more than agreement."""
    if column in NEVER_BEST:
        return set()
    return set((head.get("best") or {}).get(column) or [])


def headline_html(doc: dict | None, link: str | None = None) -> str:
    """The headline table of ``evaluation/metrics.json`` (in bold: a measure whose paired difference
    to every other excludes 0), or a note."""
    if not doc or "headline" not in doc:
        return (
            '<p class="note">Stage 09 (evaluation) has not run yet for this profile: there are no '
            "results to show. Run <code>artsim run</code> to the end.</p>"
        )
    head, ts = doc["headline"], doc.get("test_set", {})
    cols, rows = head.get("columns", []), head.get("rows", [])
    best = {c: _best(head, c) for c in cols}
    th = "".join(f"<th>{escape(c)}</th>" for c in ["measure", "what it is", *cols])
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="num{" best" if r["measure"] in best[c] else ""}">'
            f"{escape(str(r.get('text', {}).get(c, '—')))}</td>"
            for c in cols
        )
        body.append(f"<tr><td>{escape(r['measure'])}</td><td>{escape(r.get('description', ''))}</td>{cells}</tr>")
    chance = "".join(f'<td class="num">{escape(str(head.get("chance", {}).get(c, "—")))}</td>' for c in cols)
    body.append(f'<tr class="chance"><td>chance</td><td>a constant measure</td>{chance}</tr>')
    params = doc.get("params", {})
    split = escape(str(doc.get("split", "test")))
    lines = [
        f"Held-out <b>{split}</b> split only: {ts.get('originals', '?')} originals, "
        f"{ts.get('derivatives', '?')} derivatives, {ts.get('triplets', '?')} triplets; each derivative queries "
        f"{ts.get('gallery', '?')} originals. Cells: value [95% interval], a bootstrap of "
        f"{params.get('n_boot', '?')} draws resampling whole originals (proportions: at least the exact "
        "interval at n originals). µAP copy: one global ranking of the copy queries "
        f"({ts.get('copy_queries', '?')}, {ts.get('copy_queries_absent', '?')} of them with their original "
        "absent) "
        f"against {ts.get('copy_gallery', '?')} images of every split. MSE/MAE against "
        f"<code>{escape(str(doc.get('reference')))}</code> (the reference) are shown as the seed asks, beside the "
        "best constant (the chance row) and an affine calibration; they are never called best. "
        "Spearman: negative is right. <code>geometry</code> sees only the frame and the content box: what "
        "it scores, no measure earns by looking at the painting. In bold: the one measure whose paired "
        "difference to every other measure, on the same test originals, excludes 0; no bold means no "
        "measure is separable from the runner-up."
    ]
    skipped = doc.get("skipped") or []
    if skipped:
        lines.append(
            "Skipped (stage not run): "
            + "; ".join(f"<code>{escape(k['measure'])}</code> ({escape(str(k.get('reason', '')))})" for k in skipped)
        )
    if link:
        lines.append(f'Details, figures and every metric: <a href="{escape(link)}">the evaluation notebook</a>.')
    notes = "".join(f'<p class="note">{line}</p>' for line in lines)
    return f'{notes}<div style="overflow-x:auto"><table class="headline"><tr>{th}</tr>{"".join(body)}</table></div>'


def figures(stages: list[StageInfo]) -> str:
    """The key figure of each stage, captioned with the stage and what it does."""
    figs = [
        f'<figure><img alt="key figure of {escape(s.name)}" '
        f'src="data:image/png;base64,{s.figure}">'
        f"<figcaption><b>{escape(s.name)}</b> · {escape(describe(s.name))}</figcaption></figure>"
        for s in stages
        if s.figure
    ]
    return "".join(figs) or "<p>No figures yet.</p>"


def walltime_html(stages: list[StageInfo]) -> str:
    """Wall time per stage: the stage's own record and the whole notebook run."""
    rows = "".join(
        f'<tr><td>{escape(s.name)}</td><td class="num">{_fmt_s(s.wall_s)}</td>'
        f'<td class="num">{_fmt_s(s.notebook_s)}</td></tr>'
        for s in stages
    )
    total = sum(s.notebook_s or 0 for s in stages)
    return (
        f"<h3>Wall time per stage</h3><table><tr><th>stage</th><th>stage wall (s)</th>"
        f"<th>notebook wall (s)</th></tr>{rows}<tr><th>all</th><td></td>"
        f'<td class="num">{_fmt_s(total)}</td></tr></table>'
    )


def provenance_html(prov: dict) -> str:
    if not prov:
        return "<p>No provenance recorded yet (no stage has started).</p>"
    keys = ("profile", "seed", "git_commit", "updated", "run_dir", "platform", "hostname")
    rows = "".join(f"<tr><th>{k}</th><td>{escape(str(prov[k]))}</td></tr>" for k in keys if k in prov)
    pkgs = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in (prov.get("packages") or {}).items()
    )
    return (
        f"<table>{rows}</table><h3>Package versions</h3><table><tr><th>package</th><th>version</th></tr>{pkgs}</table>"
    )


def is_synthetic(P: config.Params) -> bool:
    """Synthetic data or tiny untrained models: the run tests the pipeline only."""
    return P.profile == "smoke" or P.data.source == "synthart" or P.models.build_tiny


def _evaluation_link(stages: list[StageInfo]) -> str | None:
    for s in stages:
        if s.name.startswith("09") and s.links:
            return s.links.get("HTML") or next(iter(s.links.values()))
    return None


def render(
    P: config.Params, stages: list[StageInfo], prov: dict, params_text: str, evaluation: dict | None = None
) -> str:
    """The whole index page as one string."""
    title = f"artsim — {P.profile}"
    banner = (
        f'<p class="banner">The {escape(P.profile)} profile: {escape(SMOKE_BANNER)}.</p>' if is_synthetic(P) else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
{banner}
<p>How similar are AI-generated derivatives of paintings to their WikiArt originals? Originals are captioned,
turned into moderate and radical prompts and re-generated with SDXL-Refiner img2img; handcrafted descriptors,
CLIP and ResNet-50 features and siamese networks then measure how much of each painting survived.</p>
<h2 id="stages">What was done</h2>
{stages_table(stages)}
<h2 id="results">Results: every measure on the test split</h2>
{headline_html(evaluation, _evaluation_link(stages))}
<h2 id="figures">Key figures</h2>
{figures(stages)}
<h2 id="provenance">Provenance</h2>
{provenance_html(prov)}
{walltime_html(stages)}
<h2 id="params">Resolved params</h2>
<pre>{escape(params_text)}</pre>
</body></html>
"""


def build_index(
    profile_or_params: str | os.PathLike | config.Params,
    overrides: Sequence[str] = (),
    notebooks: Sequence[Path] | None = None,
) -> Path:
    """Write ``reports/<run name>/index.html`` (the run directory's name) (atomically) and return its path."""
    P = (
        profile_or_params
        if isinstance(profile_or_params, config.Params)
        else config.load_params(profile_or_params, overrides)
    )
    params_file = P.run.params_file
    params_text = (
        params_file.read_text(encoding="utf-8")
        if params_file.exists()
        else f"# {params_file} not written yet; resolved now:\n{P.to_yaml()}"
    )
    evaluation = _read_json(P.run.root / "evaluation" / "metrics.json") or None
    page = render(P, collect_stages(P, notebooks), _read_json(P.run.provenance_file), params_text, evaluation)
    return paths.atomic_write_text(runner.reports_dir(P) / "index.html", page)
