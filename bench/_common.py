"""What the benchmarks share: running a flow as a user would, and reading a run's last checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_logged(cmd: list[str], log_path: Path, what: str) -> float:
    """Run a flow as a user would; its output goes to log_path. Returns wall seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{what} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    return seconds


def last_meta(run_dir: Path) -> dict:
    """meta.json of the run's last checkpoint, or {} when it has none."""
    metas = sorted(run_dir.glob("checkpoint_epoch*/meta.json"))
    return json.loads(metas[-1].read_text()) if metas else {}
