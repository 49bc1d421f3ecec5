"""One writer per run directory: the lock ``artsim run`` holds for the whole run.

>>> with RunLock.acquire([P.run_path, reports_dir]) as lock:   # doctest: +SKIP
...     lock.set_child(proc.pid)   # Snakemake's pid: the lock is live while either runs

The lock is a file ``.artsim-run.lock`` in each guarded folder, created atomically
(``O_CREAT | O_EXCL``), holding who took it: pid, host, the process's start time (so a reused
pid is not mistaken for the holder), when, and the command. A second run is refused with
:class:`RunLocked`, whose message says who holds the lock. A lock left by a process that died
(same host, pid gone or reused) is stale: it is broken with a message and taken. A lock taken on
another host cannot be checked and is never broken automatically; the message says how to
remove it.

Stage jobs (local or submitted to SLURM, possibly on other hosts) do not take the lock: they
belong to the run that holds it. :func:`clean_leftovers` removes the temporary files a killed
run left behind (:func:`artsim_lib.io.paths.atomic_path` names them ``.<name>.XXXXXXXX.tmp<ext>``)
and :func:`clear_snakemake_locks` the Snakemake locks a killed Snakemake could not release.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

LOCK_NAME = ".artsim-run.lock"
LOCK_ENV = "ARTSIM_RUN_LOCK"  # set by `artsim run` for its jobs: the token of the run holding the lock
# atomic_path/atomic_dir: prefix ".<name>.", 8 random characters from mkstemp, then ".tmp[<ext>]".
TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


class RunLocked(RuntimeError):
    """Another run holds the lock; the message names it (pid, host, since, command)."""


def _host() -> str:
    return socket.gethostname()


def _proc_stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (Linux): state is [0], start time [19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None."""
    stat = _proc_stat(pid)
    return stat[19] if stat else None


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (and, when ``start`` is given, is the same process)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    stat = _proc_stat(int(pid))
    if stat is None:
        return True  # no /proc: kill(pid, 0) is all we know
    if stat[0] in ("Z", "X"):  # a zombie nobody reaped yet: it is dead
        return False
    return start is None or stat[19] == start


def read_holder(lock_file: str | os.PathLike) -> dict | None:
    """The lock's record, ``{}`` for an unreadable one, None when there is no lock."""
    try:
        text = Path(lock_file).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def is_live(info: dict) -> bool | None:
    """True/False for a lock taken on this host; None when it cannot be told (another host)."""
    if info.get("host") != _host():
        return None
    return pid_alive(info.get("pid"), info.get("start")) or pid_alive(info.get("child_pid"), info.get("child_start"))


def describe(info: dict, lock_file: Path) -> str:
    """Who holds a lock, in words."""
    if not info:
        return f"an unreadable lock file {lock_file}"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time", 0)))
    child = f" (Snakemake pid {info['child_pid']})" if info.get("child_pid") else ""
    return f"{info.get('command', 'artsim run')!s} (pid {info.get('pid')}{child} on {info.get('host')}, since {since})"


class RunLock:
    """The lock files of one run; release with :meth:`release` or use as a context manager."""

    def __init__(self, files: list[Path], info: dict, broken: list[str]):
        self.files, self.info, self.broken = files, info, broken

    @property
    def token(self) -> str:
        """Names this run: the Snakefile writes params only for the run holding the lock."""
        return self.info["token"]

    @classmethod
    def acquire(cls, folders: Sequence[str | os.PathLike], command: str | None = None) -> RunLock:
        """Take the lock in every folder (created if needed), or raise :class:`RunLocked`
        having taken none. Stale locks of dead processes on this host are broken (see
        :attr:`broken` for the messages)."""
        info = {
            "pid": os.getpid(),
            "host": _host(),
            "start": _start_time(os.getpid()),
            "time": time.time(),
            "command": command or " ".join(["artsim", *sys.argv[1:]]),
            "token": f"{_host()}:{os.getpid()}:{secrets.token_hex(4)}",
        }
        taken: list[Path] = []
        broken: list[str] = []
        try:
            for folder in dict.fromkeys(Path(f).resolve() for f in folders):  # unique, in order
                folder.mkdir(parents=True, exist_ok=True)
                lock_file = folder / LOCK_NAME
                broken += _take(lock_file, info)
                taken.append(lock_file)
        except BaseException:
            for f in taken:
                f.unlink(missing_ok=True)
            raise
        return cls(taken, info, broken)

    def set_child(self, pid: int) -> None:
        """Record the Snakemake process: the lock stays live while it runs, even if we die."""
        self.info.update(child_pid=pid, child_start=_start_time(pid))
        for f in self.files:
            _write_json_atomic(f, self.info)

    def release(self) -> None:
        """Remove the lock files, if they are still ours."""
        for f in self.files:
            if (read_holder(f) or {}).get("token") == self.token:
                f.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _write_json_atomic(target: Path, info: dict) -> None:
    tmp = target.with_name(f"{target.name}.{os.getpid()}.new")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, target)


def _take(lock_file: Path, info: dict) -> list[str]:
    """Create ``lock_file`` for ``info``; break a stale one (returns the messages)."""
    messages = []
    for _ in range(3):
        try:
            fd = os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(lock_file)
            if holder is None:
                continue  # released meanwhile: try again
            live = is_live(holder) if holder else None
            if live is False:
                if _break(lock_file, holder):
                    messages.append(
                        f"removed the stale lock of {describe(holder, lock_file)}, which is no longer running"
                    )
                continue
            where = lock_file.parent
            hint = (
                "wait for it to finish or stop it"
                if live
                else f"if it is no longer running (it was started on another host), remove {lock_file}"
            )
            raise RunLocked(
                f"{where} is in use by {describe(holder, lock_file)}; nothing was changed; {hint}"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        return messages
    raise RunLocked(f"{lock_file}: could not take the lock (it keeps changing hands)")


def _break(lock_file: Path, holder: dict) -> bool:
    """Remove a stale lock unless another run replaced it meanwhile (then leave that one)."""
    aside = lock_file.with_name(f"{lock_file.name}.stale.{os.getpid()}")
    try:
        os.replace(lock_file, aside)
    except FileNotFoundError:
        return False
    if read_holder(aside) == holder:
        aside.unlink(missing_ok=True)
        return True
    try:  # we moved a fresh lock aside: put it back (fails only if yet another run took it)
        os.link(aside, lock_file)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
    return False


def holder_of(folder: str | os.PathLike) -> dict | None:
    """The record of the lock in ``folder`` when a live (or unverifiable) run holds it."""
    lock_file = Path(folder) / LOCK_NAME
    info = read_holder(lock_file)
    if info is None or (info and is_live(info) is False):
        return None
    return info


def clean_leftovers(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove the temporary files and folders an interrupted run left under ``folders``
    (only call this holding the lock: a live writer's temp files would go too)."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in list(dirnames):
                if TEMP_RE.match(name):
                    shutil.rmtree(Path(dirpath) / name, ignore_errors=True)
                    dirnames.remove(name)
                    removed.append(Path(dirpath) / name)
            for name in filenames:
                if TEMP_RE.match(name) or re.match(rf"^{re.escape(LOCK_NAME)}\.(stale\.)?\d+(\.new)?$", name):
                    (Path(dirpath) / name).unlink(missing_ok=True)
                    removed.append(Path(dirpath) / name)
    return removed


def clear_snakemake_locks(workdir: str | os.PathLike, folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove Snakemake's lock files (``<workdir>/.snakemake/locks/N.{input,output}.lock``)
    whose outputs lie under ``folders``: a Snakemake killed before its clean-up leaves them,
    and the next run would stop with ``LockException``. Call only holding the run lock of
    those folders (then no live run can own them)."""
    lockdir = Path(workdir) / ".snakemake" / "locks"
    if not lockdir.is_dir():
        return []
    roots = [Path(f).resolve() for f in folders]
    removed = []
    for out in sorted(lockdir.glob("*.output.lock")):
        try:
            lines = [line.strip() for line in out.read_text().splitlines() if line.strip()]
        except OSError:
            continue
        targets = [(Path(workdir) / line).resolve() for line in lines]
        if targets and all(any(t.is_relative_to(r) for r in roots) for t in targets):
            n = out.name.split(".", 1)[0]
            for f in (out, lockdir / f"{n}.input.lock"):
                if f.exists():
                    f.unlink()
                    removed.append(f)
    return removed


def write_params(target: str | os.PathLike, text: str, run_dir: str | os.PathLike, token: str | None = None) -> bool:
    """:func:`artsim_lib.io.paths.write_if_changed`, but only for the run holding ``run_dir``'s
    lock (``token``) or when no live run holds it: the Snakefile's params files. Raises
    :class:`RunLocked` naming the holder when the file would change under another run."""
    from artsim_lib.io import paths

    target = Path(target)
    try:
        if target.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    holder = holder_of(run_dir)
    if holder is not None and holder.get("token") != token:
        raise RunLocked(f"{run_dir} is in use by {describe(holder, Path(run_dir) / LOCK_NAME)}; not writing {target}")
    return paths.write_if_changed(target, text)
