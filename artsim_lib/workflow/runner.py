"""Run the study's notebooks: discovery, papermill execution, self-contained HTML export.

>>> nbs = discover_notebooks()           # notebooks/NN-name.ipynb, in stage order
>>> execute(nbs[0], reports_dir(P) / "01-eda.ipynb", "smoke", ["preprocess.size=96"])
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artsim_lib.io import paths

log = logging.getLogger("artsim.runner")

NOTEBOOK_RE = re.compile(r"^(\d{2})-[A-Za-z0-9][\w.-]*\.ipynb$")
KERNEL_NAME = "python3"


class StageError(RuntimeError):
    """A notebook failed; the message names the kept notebook and the failing cell's error."""


@dataclass
class StageResult:
    """What one executed stage produced."""

    stage: str
    notebook: Path
    html: Path | None
    wall_s: float


# -- where things are ----------------------------------------------------------
def notebooks_dir() -> Path:
    """``$ARTSIM_NOTEBOOKS_DIR``, else ``<project root>/notebooks``."""
    env = os.environ.get("ARTSIM_NOTEBOOKS_DIR")
    return paths.resolve(env) if env else paths.project_root() / "notebooks"


def reports_dir(run: Any) -> Path:
    """``<project root>/reports/<run name>``: the executed notebooks, their HTML and the index of
    one run directory (``runs/smoke`` -> ``reports/smoke``, ``runs/smoke-pilot24`` ->
    ``reports/smoke-pilot24``). ``run``: the run's params, its run directory, or its name."""
    path = getattr(run, "run_path", run)
    return paths.project_root() / "reports" / Path(path).name


def discover_notebooks(directory: str | os.PathLike | None = None) -> list[Path]:
    """The stage notebooks ``NN-name.ipynb`` in ``directory``, sorted by stage number."""
    d = Path(directory) if directory is not None else notebooks_dir()
    found = [p for p in d.glob("*.ipynb") if NOTEBOOK_RE.match(p.name)]
    return sorted(found, key=lambda p: (int(NOTEBOOK_RE.match(p.name).group(1)), p.name))


def stage_name(notebook: str | os.PathLike) -> str:
    """``notebooks/01-eda.ipynb`` -> ``01-eda``."""
    return Path(notebook).stem


def rule_name(notebook: str | os.PathLike) -> str:
    """The Snakemake rule of a notebook: ``01-eda`` -> ``stage_01_eda``."""
    return "stage_" + re.sub(r"\W", "_", stage_name(notebook))


def failed_notebook(log_dir: str | os.PathLike, stage: str) -> Path:
    """Where a failed run of ``stage`` is kept."""
    return Path(log_dir) / f"{stage}.failed.ipynb"


# -- the kernel ----------------------------------------------------------------
KERNEL_STDERR_ENV = "ARTSIM_KERNEL_STDERR"
# Run in the kernel before the first cell: the cells' stderr (progress bars of tqdm and
# transformers, warnings, library log lines) goes to the stage log (or, without one, to the
# terminal), not into the executed notebook, which keeps what the cells print and display.
# tqdm draws a bar at most every TQDM_MININTERVAL seconds there (a log, not a screen).
KERNEL_STARTUP = (
    "import os as _o, sys as _s; _f = _o.environ.get('" + KERNEL_STDERR_ENV + "'); "
    "_s.stderr = open(_f, 'a', buffering=1, encoding='utf-8') if _f else _s.__stderr__; "
    "del _o, _s, _f"
)
KERNEL_ENV = {"TQDM_MININTERVAL": "5"}


def kernel_argv(argv: Sequence[str]) -> list[str]:
    """The kernel's command line with :data:`KERNEL_STARTUP` and no capture of the process's own
    file descriptors (C-level output goes to the kernel's stderr, i.e. the log, too)."""
    return [*argv, f"--IPKernelApp.exec_lines={KERNEL_STARTUP}", "--IPKernelApp.capture_fd_output=False"]


def _kernel_manager_class(stderr_path: str | os.PathLike | None = None):
    """An ipykernel manager pinned to this interpreter, whatever kernelspecs are installed; the
    kernel process's stderr and the cells' (progress, warnings) go to ``stderr_path`` when given,
    else to this process's stderr."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    env = {k: os.environ.get(k, v) for k, v in KERNEL_ENV.items()}
    if stderr_path is not None:
        env[KERNEL_STDERR_ENV] = str(stderr_path)

    class ThisPythonKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self):
            if self._kernel_spec is None:
                spec = get_kernel_dict()
                spec["argv"] = kernel_argv(spec["argv"])
                self._kernel_spec = KernelSpec(resource_dir=RESOURCES, env=env, **spec)
            return self._kernel_spec

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if stderr_path is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(stderr_path, "a", encoding="utf-8") as err:  # the child keeps its copy
                kw["stderr"] = err
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return ThisPythonKernelManager


# -- execution -----------------------------------------------------------------
def notebook_parameters(
    profile: str, overrides: Sequence[str] = (), parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The values injected into a notebook's ``parameters`` cell."""
    return {"profile": str(profile), "overrides": list(overrides), **(parameters or {})}


def execute(
    notebook: str | os.PathLike,
    out_ipynb: str | os.PathLike,
    profile: str,
    overrides: Sequence[str] = (),
    parameters: dict[str, Any] | None = None,
    log_dir: str | os.PathLike | None = None,
    html: bool = True,
    timeout: float | None = None,
    log_output: bool = False,
    kernel_stderr: str | os.PathLike | None = None,
) -> StageResult:
    """Execute ``notebook`` with papermill (cwd: its folder) into ``out_ipynb``.

    The output appears only on success. On failure the executed notebook is kept as
    ``<log_dir>/<stage>.failed.ipynb`` (+ ``.html``) and :class:`StageError` is raised.
    """
    import papermill as pm

    notebook, out_ipynb = Path(notebook).resolve(), Path(out_ipynb).resolve()
    stage = stage_name(notebook)
    log_dir = Path(log_dir).resolve() if log_dir is not None else out_ipynb.parent / "logs"
    kernel_stderr = Path(kernel_stderr).resolve() if kernel_stderr else None  # papermill chdirs
    params = notebook_parameters(profile, overrides, parameters)
    log.info("executing %s with %s", notebook, params)
    t0 = time.perf_counter()
    with paths.atomic_path(out_ipynb) as tmp:
        try:
            pm.execute_notebook(
                str(notebook),
                str(tmp),
                parameters=params,
                kernel_name=KERNEL_NAME,
                language="python",
                cwd=str(notebook.parent),
                progress_bar=False,
                log_output=log_output,
                execution_timeout=timeout,
                kernel_manager_class=_kernel_manager_class(kernel_stderr),
                shutdown_kernel="immediate",
            )  # outputs are in; skip the graceful wait
        except pm.PapermillExecutionError as err:
            raise _keep_failed(tmp, notebook, log_dir, stage, _cell_error(err)) from None
        except Exception as err:  # a dead kernel, a timeout, a broken notebook file
            what = f"with {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
            raise _keep_failed(tmp, notebook, log_dir, stage, what) from err
        wall = round(time.perf_counter() - t0, 3)
        _stamp(
            tmp,
            out_ipynb,
            stage=stage,
            profile=str(profile),
            overrides=list(overrides),
            wall_s=wall,
            python=sys.executable,
        )
    failed_notebook(log_dir, stage).unlink(missing_ok=True)
    failed_notebook(log_dir, stage).with_suffix(".html").unlink(missing_ok=True)
    out_html = None
    if html:
        out_html = export_html(out_ipynb, out_ipynb.with_suffix(".html"), notebook.parent)
    log.info("%s: done in %.1f s (papermill)", stage, wall)
    return StageResult(stage, out_ipynb, out_html, wall)


TEXT_MIMES = ("text/plain", "text/markdown", "text/html", "text/latex")


def relative_outputs(nb, root: str | os.PathLike) -> int:
    """Write paths under the project ``root`` as relative to it (the root itself as ``.``) in
    the text outputs of an executed notebook (streams, text results, tracebacks), so a report
    does not show the folders of the machine that ran it. Returns how many outputs changed."""
    pattern = re.compile(re.escape(str(root)) + r"(/|(?![\w.-]))")

    def fix(text):
        if isinstance(text, list):
            return [fix(t) for t in text]
        return pattern.sub(lambda m: "" if m.group(1) == "/" else ".", text) if isinstance(text, str) else text

    changed = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            before = repr(out)
            if "text" in out:
                out["text"] = fix(out["text"])
            for mime in TEXT_MIMES:
                if mime in out.get("data", {}):
                    out["data"][mime] = fix(out["data"][mime])
            if "traceback" in out:
                out["traceback"] = fix(out["traceback"])
            changed += repr(out) != before
    return changed


def _stamp(tmp: Path, final: Path, **info: Any) -> None:
    """Record the final path and the run (wall time, interpreter) in the notebook's metadata;
    paths under the project root in the outputs made relative (:func:`relative_outputs`)."""
    import nbformat

    nb = nbformat.read(tmp, as_version=4)
    relative_outputs(nb, paths.project_root())
    nb.metadata.setdefault("papermill", {})["output_path"] = str(final)
    nb.metadata["artsim"] = info
    nbformat.write(nb, tmp)


def _cell_error(err) -> str:
    """``in cell [4]: ValueError: boom`` from papermill's error (traceback to the log)."""
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err.traceback or []))
    log.info("traceback:\n%s", tb)
    where = f"cell [{err.exec_count}]" if err.exec_count is not None else f"cell #{err.cell_index}"
    lines = str(err.evalue).strip().splitlines()
    return f"in {where}: {err.ename}: {lines[0] if lines else ''}"


def _keep_failed(tmp: Path, notebook: Path, log_dir: Path, stage: str, what: str) -> StageError:
    """Move a failed run's notebook (if any was written) into ``log_dir``; describe the failure."""
    if not tmp.exists() or tmp.stat().st_size == 0:
        return StageError(f"{stage} failed {what} (no executed notebook was written)")
    kept = failed_notebook(log_dir, stage)
    kept.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, kept)
    try:
        export_html(kept, kept.with_suffix(".html"), notebook.parent)
    except Exception as exc:  # the notebook itself is what matters
        log.warning("could not export %s to HTML: %s", kept, exc)
    return StageError(f"{stage} failed {what} (executed notebook kept at {kept})")


# -- HTML ----------------------------------------------------------------------
_SCRIPT_RE = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.S | re.I)
_EXTERNAL_ATTR_RE = re.compile(r"""\b(?:src|href)\s*=\s*(?:["']?(?:https?:)?//|""|'')""", re.I)
_LINK_RE = re.compile(r"<link\b[^>]*>", re.I)


def strip_external(html: str) -> str:
    """Drop ``<script>``/``<link>`` tags that load anything from the network (require.js,
    MathJax, mermaid from a CDN) or nothing at all (``src=""``): the page reads the same offline."""

    def script(m: re.Match) -> str:
        attrs, body = m.group(1), m.group(2)
        if _EXTERNAL_ATTR_RE.search(attrs) or re.search(r"import\(\s*[\"']https?://", body):
            return ""
        return m.group(0)

    def link(m: re.Match) -> str:
        return "" if _EXTERNAL_ATTR_RE.search(m.group(0)) else m.group(0)

    html = _SCRIPT_RE.sub(script, html)
    html = _LINK_RE.sub(link, html)
    return html.replace("<!-- Load mathjax -->\n", "")


def export_html(
    ipynb: str | os.PathLike, out_html: str | os.PathLike, source_dir: str | os.PathLike | None = None
) -> Path:
    """Export an executed notebook to one self-contained HTML file (images embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    nb = nbformat.read(ipynb, as_version=4)
    exporter = HTMLExporter(embed_images=True, mathjax_url="", require_js_url="")
    resources = {"metadata": {"name": ipynb.stem, "path": str(source_dir or ipynb.parent)}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return paths.atomic_write_text(out_html, strip_external(body))
