"""What a job did, for whoever checks that nothing was recomputed: one JSON line per event.

``artsim stage --log F`` sets ``$ARTSIM_WORK_LOG`` to ``F.work.jsonl`` (emptied when the job
starts); the loaders record each model they load and the stages how many items they computed
(``made``) rather than read back. Without the variable, :func:`record` does nothing. The
rehearsal test reads these files to show that no job re-keys or regenerates an earlier
stage's artifacts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "ARTSIM_WORK_LOG"


def record(event: str, **fields) -> None:
    """Append ``{"event": event, **fields}`` to ``$ARTSIM_WORK_LOG`` (if set)."""
    target = os.environ.get(ENV)
    if not target:
        return
    line = json.dumps({"event": event, **fields}, default=str, sort_keys=True) + "\n"
    with open(target, "a", encoding="utf-8") as fh:  # one write per line: jobs never share a file
        fh.write(line)


def start(log_file: str | os.PathLike) -> Path:
    """Point ``$ARTSIM_WORK_LOG`` at ``<log_file>.work.jsonl``, emptied; returns its path."""
    target = Path(f"{log_file}.work.jsonl").resolve()  # the kernel runs in notebooks/
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("", encoding="utf-8")
    os.environ[ENV] = str(target)
    return target


def read(path: str | os.PathLike) -> list[dict]:
    """The events of one work log (none when it does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
