"""provenance.json of a run folder: what made the stored results, session by session.

Each invocation that runs trials into a folder (a first run, each resume) appends one *session*::

    {"argv": [...], "started": t0, "finished": t1, "wall_s": t1 - t0, "trials_run": n, "executor": "...",
     "device": "cpu", "threads": 1, "vitheory_version": "...", "git_commit": "...", "torch": "...",
     "numpy": "...", "python": "...", "platform": "..."}

``finished`` stays null for a session that was killed.  The report reads this file (older run folders without
it say "not recorded").  The file is written atomically and never read by the runner, so a damaged one cannot
block a run; a failure to write it is reported, never hidden, but costs no trial.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from vitheory._version import __version__

FILE = "provenance.json"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the git checkout vitheory's sources are in ("+dirty" with local changes), else "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    import numpy
    import torch
    return {"vitheory_version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "threads": torch.get_num_threads()}


def read_provenance(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The sessions recorded in a run folder ([] when none are, or the file is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    sessions = data.get("sessions") if isinstance(data, dict) else None
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


def _write(run_dir: Path, sessions: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=FILE + ".", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"sessions": sessions}, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, run_dir / FILE)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise


def start_session(run_dir: Path, argv: list[str] | None, executor: str, device: str, todo: int,
                  started: float | None = None) -> dict[str, Any]:
    """Record the start of a session (before its first batch) and return it for :func:`finish_session`."""
    session = {"argv": list(sys.argv if argv is None else argv), "started": started or time.time(),
               "finished": None, "wall_s": None, "trials_run": todo, "executor": executor, "device": device,
               **environment()}
    try:
        _write(run_dir, read_provenance(run_dir) + [session])
    except OSError as e:
        print(f"warning: {run_dir / FILE}: cannot record provenance ({e.strerror or e})", file=sys.stderr)
    return session


def finish_session(run_dir: Path, session: dict[str, Any], ran_on: dict[str, Any] | None = None) -> None:
    """Record the end of the session started by :func:`start_session` (the last one with its start time);
    ``ran_on`` ({"device", "threads"} where the batches actually ran, e.g. on Dask workers) replaces the
    client's values."""
    sessions = read_provenance(run_dir)
    end = time.time()
    done = {"finished": end, "wall_s": end - session["started"],
            **{k: v for k, v in (ran_on or {}).items() if v is not None}}
    for s in reversed(sessions):
        if s.get("started") == session["started"] and s.get("finished") is None:
            s.update(done)
            break
    else:
        sessions.append({**session, **done})
    try:
        _write(run_dir, sessions)
    except OSError as e:
        print(f"warning: {run_dir / FILE}: cannot record provenance ({e.strerror or e})", file=sys.stderr)


def summarize(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """The provenance a report shows: the latest session's environment, all sessions' wall time and commands."""
    if not sessions:
        return {}
    last = sessions[-1]
    walls = [s.get("wall_s") for s in sessions]
    done = [w for w in walls if isinstance(w, (int, float))]
    return {**{k: last.get(k) for k in ("vitheory_version", "git_commit", "torch", "numpy", "python", "platform",
                                        "threads", "device", "executor")},
            "wall_s": sum(done) if done else None, "sessions": len(sessions),
            "unfinished_sessions": sum(1 for w in walls if w is None),
            "started": sessions[0].get("started"), "finished": last.get("finished"),
            "commands": [" ".join(map(str, s.get("argv", []))) for s in sessions]}
