"""The ``artsim`` command: run the study, one stage, the report, or show the params.

    artsim run --profile smoke [--set preprocess.size=96] [-n] [--until 02] [-- SNAKEMAKE ARGS]
    artsim run --profile full --cluster slurm [-n] [--dag dag.png]
    artsim stage notebooks/01-eda.ipynb --profile smoke [-p num_shards 4]
    artsim report --profile smoke
    artsim params --profile smoke --set seed=7

A params error prints one line naming the file and the key, and exits with status 2.
``artsim run`` holds the run directory's lock (:mod:`artsim_lib.io.runlock`) for the whole run: a
second run on the same run directory is refused (status 3) and changes nothing. Ctrl-C stops
Snakemake through its own shutdown (SIGINT; a second Ctrl-C or a minute without progress:
SIGTERM; then SIGKILL), and the next run cleans up whatever a killed run left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from artsim_lib import config
from artsim_lib.io import paths, runlock
from artsim_lib.workflow import cluster, runner

if TYPE_CHECKING:
    import pandas as pd

    from artsim_lib.measures.base import Measure

EXIT_PARAMS = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C
# Seconds to wait for Snakemake after each step of an interrupt: SIGINT (its own clean-up:
# cancel the jobs, remove incomplete outputs, release its lock), then SIGTERM, then SIGKILL.
INTERRUPT_GRACE_S = (60.0, 15.0)
LOCK_ENV = runlock.LOCK_ENV  # the token of the run that holds the lock, for its own jobs
RERUN_TRIGGERS = ("mtime", "params", "input", "code")


def profile_ref(profile: str) -> str:
    """The profile as a notebook sees it: a name stays a name, a YAML path becomes absolute
    (notebooks run with cwd=notebooks/, so a relative path would not resolve there)."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return str(config.profile_path(profile))
    return profile


def snakefile() -> Path:
    """``<root>/workflow/Snakefile``, else the one beside this package (editable install)."""
    for base in (paths.project_root(), paths.SOURCE_ROOT):
        f = base / "workflow" / "Snakefile"
        if f.exists():
            return f
    raise FileNotFoundError("workflow/Snakefile not found")


def _load(args) -> config.Params:
    return config.load_params(args.profile, args.overrides)


# -- run -----------------------------------------------------------------------
def snakemake_command(args, P: config.Params) -> list[str]:
    """The ``python -m snakemake`` command line for ``artsim run``."""
    cmd = [sys.executable, "-m", "snakemake"]
    if args.until:
        cmd.append(until_target(args.until, P))
    cmd += [
        "--snakefile",
        str(snakefile()),
        "--directory",
        str(paths.project_root()),
        "--cores",
        str(args.cores),
        "--rerun-triggers",
        *RERUN_TRIGGERS,
        "--rerun-incomplete",
    ]  # a killed job's outputs: redo them, no manual step
    if args.dry_run:
        cmd.append("--dry-run")
    if args.forceall:
        cmd.append("--forceall")
    if getattr(args, "dag", None):
        cmd += ["--dag", cluster.dag_format(args.dag)]
    if getattr(args, "cluster", None):
        cmd += cluster.snakemake_args(args.cluster)
    cmd += list(args.snakemake_args)
    cmd += [
        "--config",
        f"profile={profile_ref(args.profile)}",
        f"overrides={json.dumps(list(args.overrides))}",
        f"params_file={P.run.params_file}",
        f"notebooks_dir={runner.notebooks_dir()}",
    ]
    return cmd


def until_target(stage: str, P: config.Params) -> str:
    """The stage's executed notebook, as a Snakemake target: a sharded stage's last job is
    its merge job, so a file names the stage whichever rule makes it."""
    nb = resolve_stage(stage)
    return os.path.relpath(runner.reports_dir(P) / f"{nb.stem}.ipynb", paths.project_root())


def resolve_stage(stage: str) -> Path:
    """A stage given as ``02``, ``02-preprocessing``, ``preprocessing`` or a path."""
    nbs = runner.discover_notebooks()
    key = Path(stage).stem
    for nb in nbs:
        if key in (nb.stem, nb.stem.split("-", 1)[0], nb.stem.split("-", 1)[-1]):
            return nb
    known = ", ".join(nb.stem for nb in nbs) or "none"
    raise config.ParamsError(f"--until {stage}: no such stage (known: {known})")


def pilot_overrides(args) -> list[str]:
    """``--pilot N``: the same profile on N originals spread over the styles, in a run directory
    (and reports folder) of its own, ``<profile>-pilotN``: every stage, real models, the same
    cluster profile and shard counts, so an integration problem shows in minutes, not after the
    whole study's GPU-hours."""
    base = config.load_params(args.profile, args.overrides)
    return [f"data.sample={args.pilot}", f"profile={base.profile}-pilot{args.pilot}"]


def cmd_run(args) -> int:
    """Validate the params; take the run directory's lock; write the params if changed and let
    Snakemake run what is out of date. ``-n``/``--dag`` write nothing (and take no lock)."""
    if getattr(args, "pilot", None):
        args.overrides = list(args.overrides) + pilot_overrides(args)
    P = _load(args)
    cmd = snakemake_command(args, P)  # resolves --until before anything is written
    if args.dry_run or getattr(args, "dag", None):
        return _plan(args, P, cmd)
    folders = [P.run_path, runner.reports_dir(P)]
    try:
        lock = runlock.RunLock.acquire(folders)
    except runlock.RunLocked as err:
        print(f"artsim: error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except OSError as err:  # a run directory we may not write: one line, not a traceback
        print(f"artsim: error: cannot take the run directory's lock: {err}", file=sys.stderr)
        return EXIT_LOCKED
    with lock:
        for message in lock.broken:
            print(f"artsim: {message}", file=sys.stderr)
        _clean_up(folders)
        paths.write_if_changed(P.run.params_file, P.to_yaml())
        cmd.append(f"run_lock={lock.token}")  # --config is the last option: this joins it
        env = {**os.environ, LOCK_ENV: lock.token}
        rc, how = run_interruptible(cmd, paths.project_root(), env, on_start=lock.set_child)
        if how:
            _clean_up(folders, snakemake_killed=how == "SIGKILL")
        if rc != 0 or args.until:
            _index_anyway(P)  # Snakemake's report rule did not run: show failed/'not run' stages
        if how:
            print(
                "artsim: the run was interrupted; run the same command again to go on (finished stages are kept)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    return rc


def _clean_up(folders: list[Path], snakemake_killed: bool = True) -> None:
    """What an interrupted or killed run leaves: temp files, Snakemake's stale locks."""
    removed = runlock.clean_leftovers(folders)
    if removed:
        print(f"artsim: removed {len(removed)} temporary file(s) left by an interrupted run", file=sys.stderr)
    if snakemake_killed and runlock.clear_snakemake_locks(paths.project_root(), folders):
        print("artsim: removed the Snakemake lock left by an interrupted run", file=sys.stderr)


def _plan(args, P: config.Params, cmd: list[str]) -> int:
    """``-n`` and ``--dag``: Snakemake's plan for the params as they are now, writing nothing
    into the run directory. Params files that would change are written to a temporary folder
    instead, so the plan shows the stages that changed params would re-run."""
    with tempfile.TemporaryDirectory(prefix="artsim-plan-") as tmp:
        target, text = P.run.params_file, P.to_yaml()
        if not (target.exists() and target.read_text(encoding="utf-8") == text):
            target = Path(tmp) / target.name
            target.write_text(text, encoding="utf-8")
        i = cmd.index("--config")
        cmd = [c for c in cmd if not c.startswith("params_file=")]
        cmd[i + 1 : i + 1] = [f"params_file={target}", f"plan_dir={tmp}"]  # the stages' params: the Snakefile
        if getattr(args, "dag", None):
            return _write_dag(cmd, Path(args.dag).resolve())
        return subprocess.run(cmd, cwd=paths.project_root()).returncode


def run_interruptible(
    cmd: list[str], cwd, env=None, on_start=None, grace: tuple[float, float] = INTERRUPT_GRACE_S
) -> tuple[int, str | None]:
    """Run ``cmd`` in a process group of its own and return ``(returncode, how)``, ``how``
    being None, or the last signal sent to the group when we were interrupted.

    Ctrl-C (SIGINT), SIGTERM or SIGHUP here sends the group SIGINT, once: Snakemake and its jobs
    stop through their own clean-up. A second signal, or ``grace[0]`` seconds without the group
    ending, sends SIGTERM; a third, or ``grace[1]`` seconds more, SIGKILL."""
    received: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # before the child exists: a
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C now is not lost
            handlers[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    steps = [(signal.SIGINT, grace[0]), (signal.SIGTERM, grace[1]), (signal.SIGKILL, None)]
    sent, deadline, seen, how = 0, None, 0, None
    try:
        popen = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, **popen)
        if on_start is not None:
            on_start(proc.pid)
        while True:
            try:
                return proc.wait(timeout=0.2), how
            except subprocess.TimeoutExpired:
                pass
            overdue = deadline is not None and time.monotonic() > deadline
            if (len(received) > seen or overdue) and sent < len(steps):
                seen = len(received)
                sig, wait = steps[sent]
                sent += 1
                how = sig.name
                print(
                    f"artsim: stopping Snakemake ({sig.name})"
                    + (" – Ctrl-C again to stop it harder" if sig != signal.SIGKILL else ""),
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + wait if wait is not None else None
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def _write_dag(cmd: list[str], target: Path) -> int:
    """Run ``snakemake --dag`` (nothing is executed) and write or draw the graph."""
    proc = subprocess.run(cmd, cwd=paths.project_root(), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return proc.returncode
    _, message = cluster.write_dag(proc.stdout, target)
    print(f"artsim: {message}", file=sys.stderr)
    return 0


def _index_anyway(P: config.Params) -> None:
    from artsim_lib.workflow import report

    try:
        print(f"artsim: index: {report.build_index(P)}", file=sys.stderr)
    except Exception as exc:  # never hide the run's own error behind this one
        print(f"artsim: could not write the index: {exc}", file=sys.stderr)


# -- stage, report, params ------------------------------------------------------
def _parse_value(raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _setup_logging(log_file: str | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("artsim stage: %(message)s"))
    root.addHandler(console)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        Path(log_file).write_text("", encoding="utf-8")  # append mode below: the kernel shares it
        fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(fh)


def cmd_stage(args) -> int:
    """Execute one notebook with papermill, then export it to HTML."""
    P = _load(args)
    nb = Path(args.notebook)
    out = Path(args.out) if args.out else runner.reports_dir(P) / f"{nb.stem}.ipynb"
    log_dir = Path(args.log_dir) if args.log_dir else out.parent / "logs"
    _setup_logging(args.log)
    if args.log:  # the kernel inherits it: model loads and computed items per job
        from artsim_lib.io import worklog

        worklog.start(args.log)
    extra = {name: _parse_value(value) for name, value in args.parameters}
    try:
        res = runner.execute(
            nb,
            out,
            profile_ref(args.profile),
            args.overrides,
            extra,
            log_dir=log_dir,
            html=not args.no_html,
            timeout=args.timeout,
            log_output=bool(args.log),
            kernel_stderr=args.log,
        )
    except runner.StageError as err:
        logging.getLogger("artsim").error("%s", err)  # stderr and the log file
        return 1
    print(f"{res.stage}: ok in {res.wall_s:.1f} s -> {res.html or res.notebook}")
    return 0


def cmd_report(args) -> int:
    from artsim_lib.workflow import report

    P = _load(args)
    holder = runlock.holder_of(runner.reports_dir(P))
    if holder is not None and holder.get("token") != os.environ.get(LOCK_ENV):
        lock_file = runner.reports_dir(P) / runlock.LOCK_NAME
        print(
            f"artsim: error: {lock_file.parent} is in use by {runlock.describe(holder, lock_file)}; "
            "its index is written by that run",
            file=sys.stderr,
        )
        return EXIT_LOCKED
    print(report.build_index(P))
    return 0


def cmd_params(args) -> int:
    text = _load(args).to_yaml()
    if args.output:
        paths.write_if_changed(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


# -- the parser ----------------------------------------------------------------
def _params_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--profile", default="smoke", help="a profile name under params/ or a YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter (repeatable), e.g. preprocess.size=96",
    )
    return p


def _add_run(sub, parent) -> None:
    p = sub.add_parser(
        "run",
        parents=[parent],
        help="run the study (Snakemake)",
        description="Run every stage that is out of date, then the index. Arguments after '--' go to snakemake.",
    )
    p.add_argument("-n", "--dry-run", action="store_true", help="show the plan, run nothing")
    p.add_argument("--cores", default="1", help="cores for Snakemake (default 1; 'all')")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage (02, 02-preprocessing)")
    p.add_argument("--forceall", action="store_true", help="re-run every stage")
    p.add_argument(
        "--cluster",
        metavar="PROFILE",
        help="submit the jobs through a workflow profile: a name under "
        "workflow/profiles/ (slurm) or a folder; see the README, 'Running on a cluster'",
    )
    p.add_argument(
        "--pilot",
        type=int,
        metavar="N",
        help="run the profile on N originals (spread over the styles) into its own run "
        "directory runs/<profile>-pilotN: do this first on a cluster",
    )
    p.add_argument(
        "--dag",
        metavar="FILE",
        help="write the job graph instead of running (.dot, .mmd; .png/.svg/.pdf need graphviz)",
    )


def _add_stage(sub, parent) -> None:
    p = sub.add_parser("stage", parents=[parent], help="execute one notebook (papermill)")
    p.add_argument("notebook")
    p.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="another notebook parameter (YAML value)",
    )
    p.add_argument("--out", help="executed notebook (default reports/<run name>/<stage>.ipynb)")
    p.add_argument("--log", help="log file (papermill, cell output, kernel stderr)")
    p.add_argument("--log-dir", help="where a failed notebook is kept (default <out dir>/logs)")
    p.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    p.add_argument("--no-html", action="store_true", help="skip the HTML export")


# -- artsim compare / artsim matrix: a measure of the registry (artsim_lib.measures.registry) on images ----
# Their own parsers: bad input gives exit status 2 and one line on stderr (ARTSIM_DEBUG=1 shows the
# traceback instead). The registry is imported when one runs, so `artsim run` does not pay for it.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    from artsim_lib.measures.base import MeasureError

    folder = Path(folder)
    if not folder.is_dir():
        raise MeasureError(f"{folder}: no such directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise MeasureError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    return files


def readable_images(files: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(readable files, [(file, reason), ...])``: each file is read as the study reads images."""
    from artsim_lib.core.descriptors import ImageReadError
    from artsim_lib.measures.base import read_image

    good, bad = [], []
    for f in files:
        try:
            read_image(f)
        except ImageReadError as err:
            bad.append((f, " ".join(str(err).split()).removeprefix(f"{f}: ")))
        else:
            good.append(f)
    return good, bad


def write_matrix(
    folder: str | os.PathLike,
    measure: Measure | str,
    out_png: str | os.PathLike,
    out_csv: str | os.PathLike,
    run_dir=None,
) -> pd.DataFrame:
    """The [0, 1] similarity of every pair of images in ``folder``: a CSV (file names as row
    and column labels) and a heatmap PNG, both written atomically. Returns the table."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from artsim_lib.measures import registry
    from artsim_lib.plots.similarity import plot_matrix

    m = registry.load_measure(measure, run_dir) if isinstance(measure, str) else registry.as_measure(measure)
    files, skipped = readable_images(list_images(folder))
    if not files:
        raise registry.MeasureError(
            f"{folder}: none of the {len(skipped)} image(s) can be read (first: {skipped[0][0].name}: {skipped[0][1]})"
        )
    names = [f.name for f in files]
    table = pd.DataFrame(m.matrix(files, normalised=True), index=names, columns=names)
    with paths.atomic_path(out_csv) as tmp:
        table.to_csv(tmp, float_format="%.6f")
    fig = plot_matrix(table, f"{m.name} similarity · {Path(folder).name}")
    with paths.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    table.attrs["skipped"] = [(f.name, why) for f, why in skipped]
    return table


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise _UsageError(message)


def _run_cli(prog: str, build, body, argv) -> int:
    parser = build(_Parser(prog=prog))
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        return body(args)
    except SystemExit as stop:  # --help
        return int(stop.code or 0)
    except _UsageError as err:
        print(f"{prog}: error: {err} (see --help)", file=sys.stderr)
    except (ValueError, OSError) as err:  # ImageReadError, MeasureError, ParamsError, missing files
        if os.environ.get("ARTSIM_DEBUG"):
            raise
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def _load_for_cli(name: str, run_dir):
    from artsim_lib.measures import registry

    try:
        return registry.load_measure(name, run_dir)
    except FileNotFoundError as err:  # a loader's own "no model" error: add the CLI's way out
        msg = str(err)
        raise registry.MeasureUnavailableError(msg if "--run" in msg else f"{msg}; or pass --run DIR") from None


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from artsim_lib.core.descriptors import FAMILIES
    from artsim_lib.measures.registry import DEFAULT_MEASURE

    p.add_argument(
        "--measure",
        default=DEFAULT_MEASURE,
        help=f"a measure name (default: {DEFAULT_MEASURE}; built-in: "
        f"effnet_lite0, descriptor, descriptor_fitted, {', '.join(FAMILIES)}; trained ones need --run)",
    )
    p.add_argument(
        "--run",
        metavar="DIR",
        help="run directory holding trained models and params "
        "(default: descriptor measures use the default "
        "params, trained ones $ARTSIM_RUN_DIR or runs/smoke)",
    )
    return p


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``artsim compare A B [--measure NAME] [--run DIR] [--families]``: print the raw and the
    [0, 1] similarity of two images. Exit status 2 with a one-line error on bad input."""

    def build(p):
        p.description = "Similarity of two images under one measure: raw and mapped to [0, 1]."
        p.add_argument("a", help="first image file")
        p.add_argument("b", help="second image file")
        p.add_argument("--families", action="store_true", help="also print each descriptor family")
        return _common(p)

    def body(args) -> int:
        from artsim_lib.measures.base import DescriptorMeasure, read_image
        from artsim_lib.measures.registry import settings_source

        for p in (args.a, args.b):
            read_image(p)  # fails early, naming the file, before any model is loaded
        m = _load_for_cli(args.measure, args.run)
        print(f"artsim compare: settings: {settings_source(args.measure, args.run)}", file=sys.stderr)
        if isinstance(m, DescriptorMeasure):  # features once, for the total and the families
            fa, fb = m.features([args.a, args.b])
            raw = m.raw_from_features(fa, fb)
            s01 = m.to01(raw)
        else:
            raw, s01 = m.scores(args.a, args.b)
        print(f"measure  {m.name}\nraw      {raw:.6f}\n[0,1]    {s01:.6f}\nmapping  {m.mapping}")
        if args.families and isinstance(m, DescriptorMeasure):
            for family, value in m.family_scores(fa, fb).items():
                print(f"  {family:<8} {value:.6f}")
        return 0

    return _run_cli("artsim compare", build, body, argv)


def matrix_main(argv: Sequence[str] | None = None) -> int:
    """``artsim matrix DIR [--measure NAME] [--run DIR] [--png F] [--csv F]``: the [0, 1]
    similarity of every pair of images in a folder, as a heatmap PNG and a CSV."""

    def build(p):
        p.description = "Pairwise [0, 1] similarity of the images in a folder: heatmap PNG and CSV."
        p.add_argument("dir", help="folder of images (png, jpg, webp, bmp, tif)")
        p.add_argument("--png", help="heatmap file (default: ./<dir name>-<measure>.png)")
        p.add_argument("--csv", help="table file (default: ./<dir name>-<measure>.csv)")
        return _common(p)

    def body(args) -> int:
        from artsim_lib.measures.registry import settings_source

        stem = f"{Path(args.dir).resolve().name}-{args.measure}"
        png, csv = Path(args.png or f"{stem}.png"), Path(args.csv or f"{stem}.csv")
        list_images(args.dir)  # a bad folder fails before any model is loaded
        m = _load_for_cli(args.measure, args.run)
        print(f"artsim matrix: settings: {settings_source(args.measure, args.run)}", file=sys.stderr)
        table = write_matrix(args.dir, m, png, csv)
        skipped = table.attrs.get("skipped", [])
        if skipped:
            print(f"artsim matrix: skipped {len(skipped)} file(s) that cannot be read:", file=sys.stderr)
            for name, why in skipped:
                print(f"  {name}: {why}", file=sys.stderr)
        if len(table) <= 12:
            print(table.round(3).to_string())
        print(
            f"{len(table)} images · measure {args.measure} · wrote {png} and {csv}"
            + (f" · {len(skipped)} skipped" if skipped else "")
        )
        return 0

    return _run_cli("artsim matrix", build, body, argv)


# Subcommands with their own argument parser (above; see `artsim compare -h`).
DELEGATED = {
    "compare": ("similarity of two images: A B [--measure NAME] [--run DIR]", compare_main),
    "matrix": ("similarity matrix of a folder of images: DIR -> heatmap PNG + CSV", matrix_main),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    """The parser and the handler of each subcommand (add ``compare``/``matrix`` here)."""
    parser = argparse.ArgumentParser(
        prog="artsim",
        description="Run the artsim study: all stages, one stage, the report.",
        epilog="A params error prints one line naming the file and the key (exit status 2).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = _params_parent()
    _add_run(sub, parent)
    _add_stage(sub, parent)
    sub.add_parser("report", parents=[parent], help="write reports/<run name>/index.html (runs/smoke -> reports/smoke)")
    p = sub.add_parser("params", parents=[parent], help="print the resolved params (YAML)")
    p.add_argument("-o", "--output", help="write to this file (only if changed)")
    for name, (text, _) in DELEGATED.items():  # listed here, parsed by their own parsers
        sub.add_parser(name, help=text, add_help=False)
    handlers = {"run": cmd_run, "stage": cmd_stage, "report": cmd_report, "params": cmd_params}
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``artsim`` console script and ``python -m artsim_lib``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1 :]
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]][1](argv[1:])
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if passthrough and args.command != "run":
        parser.error("arguments after '--' are for 'artsim run' (they go to snakemake)")
    args.snakemake_args = passthrough
    try:
        return handlers[args.command](args)
    except config.ParamsError as err:
        print(f"artsim: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return EXIT_PARAMS


if __name__ == "__main__":
    sys.exit(main())
